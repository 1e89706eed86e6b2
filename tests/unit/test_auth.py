import pytest

from overlay.exceptions import ConfigError
from overlay.server.auth import Credentials, PasswordHash, hash_password


def test_hash_verifies_and_is_salted():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second
    assert first.startswith("scrypt$14$8$1$")
    assert "correct horse" not in first
    assert PasswordHash.parse(first).matches("correct horse")
    assert not PasswordHash.parse(first).matches("correct horsE")


def test_credentials_remember_only_successes():
    credentials = Credentials("VPN", PasswordHash.parse(hash_password("s3cret-pass", log_n=10)))
    assert not credentials.remembered("VPN", "s3cret-pass")
    assert not credentials.check("VPN", "wrong")
    assert not credentials.remembered("VPN", "wrong")
    assert not credentials.check("vpn", "s3cret-pass")
    assert credentials.check("VPN", "s3cret-pass")
    assert credentials.remembered("VPN", "s3cret-pass")


@pytest.mark.parametrize(
    "text", ["", "123456", "scrypt$14$8$1$@@@$abc", "bcrypt$1$2$3$4$5", "scrypt$40$8$1$AAAA$AAAA"]
)
def test_bad_hashes_are_config_errors(text):
    with pytest.raises(ConfigError, match="overlay hash-password"):
        PasswordHash.parse(text)
