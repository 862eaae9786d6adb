import pytest

from cxrlab.data.patients import infer_patient


@pytest.mark.parametrize("name,patient", [
    ("00000013_005.png", "13"),
    ("person1_bacteria_1.jpeg", "person1"),
    ("person1003_virus_1685.jpeg", "person1003"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0381-0001.jpeg", "NORMAL2-IM-0381"),
    ("IM-0429-0001-0002.jpeg", "IM-0429"),
    ("scan_42.png", None),
])
def test_known_names(name, patient):
    assert infer_patient(f"/some/dir/{name}") == patient
