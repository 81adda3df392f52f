import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.inference.quantize import dequantize, quantize, tensor_params

scales = st.floats(min_value=1e-4, max_value=10.0, allow_nan=False)
zero_points = st.integers(min_value=-128, max_value=127)


def test_known_values() -> None:
    assert quantize([0.0, 0.5, -0.5, 1.0, 100.0, -100.0], 0.5, 0).tolist() == [
        0,
        1,
        -1,
        2,
        127,
        -128,
    ]
    assert quantize([0.25, -0.25], 0.5, 0).tolist() == [1, -1]  # half away from zero, like TFLite
    assert quantize([0.0], 0.1, -5).tolist() == [-5]
    assert dequantize(np.array([-5, 5], dtype=np.int8), 0.1, -5).tolist() == pytest.approx(
        [0.0, 1.0]
    )


@given(value=st.floats(min_value=-50, max_value=50), scale=scales, zero_point=zero_points)
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(
    value: float, scale: float, zero_point: int
) -> None:
    low, high = scale * (-128 - zero_point), scale * (127 - zero_point)
    q = quantize([value], scale, zero_point)
    back = float(dequantize(q, scale, zero_point)[0])
    if low <= value <= high:
        assert abs(back - value) <= scale / 2 + 1e-6 * max(1.0, abs(value))
    else:
        assert back == pytest.approx(low if value < low else high)


@given(
    values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50),
    scale=scales,
    zero_point=zero_points,
)
def test_quantize_is_monotonic_and_saturates(
    values: list[float], scale: float, zero_point: int
) -> None:
    ordered = sorted(values)
    q = quantize(ordered, scale, zero_point).tolist()
    assert q == sorted(q)
    assert all(-128 <= v <= 127 for v in q)


def test_tensor_params() -> None:
    assert tensor_params({"quantization": (0.02, -3)}) == (0.02, -3)
    assert tensor_params({"quantization": (0.0, 0)}) is None
    assert tensor_params({}) is None
