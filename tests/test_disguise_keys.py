import os
import pickle
import stat

import pytest

from fedisguise.disguise import DisguiseKey


def _private(path, text):
    """A file with `text`, mode 0600 (what DisguiseKey.load demands of any key file)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_save_writes_owner_only_file_and_load_round_trips(tmp_path):
    key = DisguiseKey.generate()
    path = key.save(tmp_path / "k" / "client.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DisguiseKey.load(path) == key
    wide = tmp_path / "wide.key"
    wide.write_text("old")
    wide.chmod(0o644)
    key.save(wide)
    assert stat.S_IMODE(wide.stat().st_mode) == 0o600  # rights narrowed on overwrite


def test_seeded_keys_are_reproducible_and_distinct():
    assert DisguiseKey.generate(5) == DisguiseKey.generate(5)
    assert DisguiseKey.generate(5) != DisguiseKey.generate(6)
    assert DisguiseKey.generate() != DisguiseKey.generate()


def test_client_keys_are_derived_and_independent():
    master = DisguiseKey.generate(0)
    assert master.for_client(1) == master.for_client(1)
    assert master.for_client(1) != master.for_client(2) != master
    assert master.secret_bytes("a") != master.secret_bytes("b")


def test_missing_truncated_and_malformed_key_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.key"):
        DisguiseKey.load(tmp_path / "absent.key")
    good = DisguiseKey.generate(1).save(tmp_path / "good.key").read_text()
    truncated = _private(tmp_path / "truncated.key", good[:-10])
    with pytest.raises(ValueError, match="truncated.key: truncated or malformed"):
        DisguiseKey.load(truncated)
    garbage = _private(tmp_path / "garbage.key", "hello\n")
    with pytest.raises(ValueError, match="garbage.key: not a fedisguise key file"):
        DisguiseKey.load(garbage)
    nonhex = _private(tmp_path / "nonhex.key", good.splitlines()[0] + "\n" + "zz" * 32 + "\n")
    with pytest.raises(ValueError, match="nonhex.key: malformed"):
        DisguiseKey.load(nonhex)


def test_key_material_never_shows_in_repr_or_pickles():
    key = DisguiseKey.generate(3)
    material = key.secret_bytes("x")  # any derived bytes; the raw key is private
    assert "secret" in repr(key) and material.hex() not in repr(key)
    assert key._material.hex() not in repr(key) + str(key)
    with pytest.raises(TypeError, match="not serialisable"):
        pickle.dumps(key)


def test_trailing_blank_lines_are_accepted_and_other_extra_lines_named(tmp_path):
    key = DisguiseKey.generate(2)
    path = key.save(tmp_path / "k.key")
    path.write_text(path.read_text() + "\n  \n")
    assert DisguiseKey.load(path) == key
    path.write_text(path.read_text().rstrip() + "\n# my laptop's key\n")
    with pytest.raises(ValueError, match="k.key: unexpected content on line 3") as err:
        DisguiseKey.load(path)
    assert "header" not in str(err.value).split("(")[0]  # the header is right: not the message
    assert "laptop" not in str(err.value)  # the line is never echoed


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606], ids=oct)
def test_key_file_others_may_read_or_write_is_refused_like_ssh(tmp_path, mode):
    path = DisguiseKey.generate(3).save(tmp_path / "open.key")
    path.chmod(mode)
    with pytest.raises(PermissionError, match=f"{mode:04o} are too open") as err:
        DisguiseKey.load(path)
    assert f"chmod 600 {path}" in str(err.value)
    path.chmod(0o400)  # owner read-only is as good as 0600
    assert DisguiseKey.load(path) == DisguiseKey.generate(3)


def test_key_path_that_is_a_directory_or_unreadable_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        DisguiseKey.load(tmp_path)
    path = DisguiseKey.generate(4).save(tmp_path / "locked.key")
    path.chmod(0o000)
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    with pytest.raises(PermissionError, match="locked.key: cannot read"):
        DisguiseKey.load(path)
