import pickle
import stat

import pytest

from fedisguise.disguise import DisguiseKey


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
    truncated = tmp_path / "truncated.key"
    truncated.write_text(good[:-10])
    with pytest.raises(ValueError, match="truncated.key: truncated or malformed"):
        DisguiseKey.load(truncated)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello\n")
    with pytest.raises(ValueError, match="garbage.key: not a fedisguise key file"):
        DisguiseKey.load(garbage)
    nonhex = tmp_path / "nonhex.key"
    nonhex.write_text(good.splitlines()[0] + "\n" + "zz" * 32 + "\n")
    with pytest.raises(ValueError, match="nonhex.key: malformed"):
        DisguiseKey.load(nonhex)


def test_key_material_never_shows_in_repr_or_pickles():
    key = DisguiseKey.generate(3)
    material = key.secret_bytes("x")  # any derived bytes; the raw key is private
    assert "secret" in repr(key) and material.hex() not in repr(key)
    assert key._material.hex() not in repr(key) + str(key)
    with pytest.raises(TypeError, match="not serialisable"):
        pickle.dumps(key)
