"""Which apiserver refusals mean "this object can never be written" (kube._from_status)."""

from __future__ import annotations

from agenttoken.kube.adapter import _from_status


def test_a_validation_error_naming_fields_is_an_invalid_object() -> None:
    body = {
        "kind": "Status",
        "reason": "Invalid",
        "message": 'Secret "3..x" is invalid: metadata.name: Invalid value: "3..x"',
        "details": {"causes": [{"reason": "FieldValueInvalid", "field": "metadata.name"}]},
    }
    error = _from_status(422, body, "Unprocessable Entity")
    assert error.invalid_object
    assert error.fields == ("metadata.name",)
    assert "metadata.name" in str(error)


def test_an_admission_denial_is_not_an_invalid_object() -> None:
    # A ValidatingAdmissionPolicy or webhook denial is a 422 too, but names no field of the
    # object: the policy may change, so the write is retried with backoff.
    body = {
        "kind": "Status",
        "reason": "Invalid",
        "message": "ValidatingAdmissionPolicy 'freeze' with binding 'freeze' denied request: frozen",
        "details": {"causes": [{"message": "frozen"}]},
    }
    error = _from_status(422, body, "Unprocessable Entity")
    assert not error.invalid_object
    assert error.status == 422
    assert not _from_status(403, {"message": "forbidden"}, None).invalid_object
    assert str(_from_status(500, None, "Internal Server Error")) == "HTTP 500: Internal Server Error"
