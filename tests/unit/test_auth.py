import pytest

from overlay.exceptions import ConfigError
from overlay.server.auth import WELL_KNOWN, Checker, Credentials, PasswordHash, hash_password


def test_hash_verifies_and_is_salted():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second
    assert first.startswith("scrypt$14$8$1$")
    assert "correct horse" not in first
    assert PasswordHash.parse(first).matches("correct horse")
    assert not PasswordHash.parse(first).matches("correct horsE")


def test_checker_remembers_only_successes():
    checker = Checker()
    shared = Credentials("VPN", PasswordHash.parse(hash_password("s3cret-pass", log_n=10)))
    other = Credentials("SN-1", PasswordHash.parse(hash_password("s3cret-pass", log_n=10)))

    def attempt(expected, username, password):
        token = checker.token(expected, username, password)
        return checker.remembered(token), checker.check(expected, username, password, token)

    assert attempt(shared, "VPN", "wrong") == (False, False)
    assert attempt(shared, "VPN", "wrong") == (False, False)  # failures are never remembered
    assert attempt(shared, "vpn", "s3cret-pass") == (False, False)
    assert attempt(shared, "VPN", "s3cret-pass") == (False, True)
    assert checker.remembered(checker.token(shared, "VPN", "s3cret-pass"))
    # the same password against other credentials is another attempt
    assert not checker.remembered(checker.token(other, "VPN", "s3cret-pass"))


@pytest.mark.parametrize(
    "text", ["", "123456", "scrypt$14$8$1$@@@$abc", "bcrypt$1$2$3$4$5", "scrypt$40$8$1$AAAA$AAAA"]
)
def test_bad_hashes_are_config_errors(text):
    with pytest.raises(ConfigError, match="overlay hash-password"):
        PasswordHash.parse(text)


def test_a_hash_found_not_well_known_is_not_checked_again(tmp_path, monkeypatch):
    checked = tmp_path / "password-checked"
    strong = PasswordHash.parse(hash_password("a-strong-one-7f3c", log_n=10))
    assert strong.well_known_unless_checked(checked) is None
    assert checked.stat().st_mode & 0o777 == 0o600
    runs = []
    monkeypatch.setattr(PasswordHash, "matches", lambda self, p: runs.append(p) or False)
    assert strong.well_known_unless_checked(checked) is None
    assert runs == []  # the restart skipped the dozen scrypt runs
    other = PasswordHash.parse(hash_password("a-strong-one-7f3c", log_n=10))  # another salt
    assert other.well_known_unless_checked(checked) is None
    assert len(runs) == len(WELL_KNOWN)


def test_a_weak_hash_is_refused_whatever_the_mark_says(tmp_path):
    checked = tmp_path / "password-checked"
    assert (
        PasswordHash.parse(hash_password("strong-2b8e", log_n=10)).well_known_unless_checked(
            checked
        )
        is None
    )
    weak = PasswordHash.parse(hash_password("123456", log_n=10))
    assert weak.well_known_unless_checked(checked) == "123456"
    assert weak.well_known_unless_checked(checked) == "123456"  # never marked
