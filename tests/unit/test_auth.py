import pytest

from overlay.exceptions import ConfigError
from overlay.server.auth import Checker, Credentials, PasswordHash, hash_password


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
