import io
import json
import logging

import pytest

from flannelish.errors import (
    CniCode,
    ConfigError,
    EtcdError,
    ExitCode,
    FlannelishError,
    NotAvailableError,
    OutOfSubnetsError,
    cni_code_for,
    exit_code_for,
)
from flannelish.logs import setup_logging

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("exc", "exit_code", "cni_code"),
    [
        (ConfigError("bad"), ExitCode.CONFIG, CniCode.INVALID_CONFIG),
        (EtcdError("down"), ExitCode.ETCD, CniCode.TRY_AGAIN_LATER),
        (OutOfSubnetsError("full"), ExitCode.OUT_OF_SUBNETS, CniCode.INTERNAL),
        (NotAvailableError("missing"), ExitCode.NOT_AVAILABLE, CniCode.TRY_AGAIN_LATER),
        (ValueError("surprise"), ExitCode.ERROR, CniCode.INTERNAL),
    ],
)
def test_each_error_maps_to_one_exit_code_and_one_cni_code(exc, exit_code, cni_code):
    assert exit_code_for(exc) == exit_code
    assert cni_code_for(exc) == cni_code


def test_exit_codes_of_distinct_failures_are_distinct():
    codes = [c.value for c in ExitCode]
    assert len(codes) == len(set(codes))


def test_error_message_includes_details():
    assert str(FlannelishError("no subnet", "12 leased, 2 reserved")) == (
        "no subnet: 12 leased, 2 reserved"
    )


def test_json_log_lines_carry_structured_fields():
    stream = io.StringIO()
    setup_logging("json", "INFO", stream=stream)
    logging.getLogger("flannelish.test").info("route added", extra={"dst": "10.244.3.0/24"})
    doc = json.loads(stream.getvalue())
    assert doc["msg"] == "route added"
    assert doc["dst"] == "10.244.3.0/24"
    assert doc["level"] == "info"


def test_text_log_lines_append_fields_as_key_value():
    stream = io.StringIO()
    setup_logging("text", "INFO", stream=stream)
    logging.getLogger("flannelish.test").info("neigh replaced", extra={"ip": "10.244.3.0"})
    line = stream.getvalue()
    assert "neigh replaced" in line and "ip=10.244.3.0" in line


def test_unknown_log_format_is_rejected():
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("xml")
