import pytest

from fleetscore.core.sensors import Sensor, is_valid_id, validate_id
from fleetscore.errors import InvalidIdError


@pytest.mark.parametrize("good", ["1", "dev_a", "t.x", "A-9", "x" * 64, "..a"])
def test_valid_ids(good):
    assert validate_id(good) == good


@pytest.mark.reliability("R8")
@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "x" * 65, "é", "a b", "a,b", "../x"])
def test_invalid_ids_are_refused_before_any_path(bad):
    assert not is_valid_id(bad)
    with pytest.raises(InvalidIdError, match="invalid"):
        Sensor(bad, "1")


def test_sensor_text_form_roundtrip():
    s = Sensor("dev_a", "t.x")
    assert Sensor.parse(str(s)) == s
    assert s.path == "dev_a/t.x"
    with pytest.raises(InvalidIdError):
        Sensor.parse("no-slash")
