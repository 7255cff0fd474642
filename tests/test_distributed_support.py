"""Each method declares the distributed settings it supports; a run under another is refused."""

from __future__ import annotations

import pytest

from mmcl.methods import METHODS
from mmcl.runner import check_distributed_support

SETTINGS = ["ddp", "fsdp", "zero1", "zero2", "zero3"]

# What the methods declare, and why (see each method's docstring).
EXPECTED = {
    "lora-ft": set(SETTINGS),
    "replay": set(SETTINGS),
    "ewc": {"ddp", "zero1"},  # the penalty needs every parameter in full on each rank
    "o-lora": {"ddp"},  # the orthogonality term needs every old A in full
    "moelora": {"ddp", "zero1", "zero2"},  # hand-written layer, not run under sharding
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_declared_support(name: str) -> None:
    assert set(METHODS.get(name).supports) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(n for n in METHODS.names()))
@pytest.mark.parametrize("setting", [None, *SETTINGS])
def test_refused_exactly_when_unsupported(name: str, setting: str | None) -> None:
    cls = METHODS.get(name)
    if setting is None or setting in cls.supports:
        check_distributed_support(cls, setting)
    else:
        with pytest.raises(RuntimeError, match=rf"method '{name}' does not support {setting.upper()} \(supported: "):
            check_distributed_support(cls, setting)
