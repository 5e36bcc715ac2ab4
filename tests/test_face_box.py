"""The one face-box parser shared by the CLI, the library and the ComfyUI node."""

import math

import pytest

from sonic.errors import ParameterError
from sonic.inputs.face_box import parse_face_box
from sonic.inputs.face_detectors import FaceBox


@pytest.mark.parametrize("given, expected", [
    (None, None), ("", None), (" auto ", None), ("FULL", "full"),
    ("10,20,110,140", (10.0, 20.0, 110.0, 140.0)), ("10; 20; 110; 140", (10.0, 20.0, 110.0, 140.0)),
    (" 1.5 , 2 , 3 , 4 ", (1.5, 2.0, 3.0, 4.0)), ((0, 0, 5, 5), (0.0, 0.0, 5.0, 5.0)),
    (FaceBox(1, 2, 3, 4, 0.9), (1.0, 2.0, 3.0, 4.0)),
])
def test_accepted_forms(given, expected):
    assert parse_face_box(given) == expected


@pytest.mark.parametrize("given, words", [
    ("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"), ((1, 2, 3, math.nan), "four numbers"),
    ("1,2,3,inf", "four numbers"), ((1, 2), "four numbers"), (42, "four numbers"),
    ("-5,0,60,70", "empty or negative"), ("50,0,10,70", "empty or negative"), ("0,70,60,70", "empty or negative"),
])
def test_refusals_are_parameter_errors_that_say_what_is_wrong(given, words):
    with pytest.raises(ParameterError, match=words):
        parse_face_box(given)
