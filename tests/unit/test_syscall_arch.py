"""bpf(2)'s syscall number is picked by architecture; an unknown one is refused
by name, and only when bpf() is first needed."""
from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import pytest

from vnetdp.datapath import syscall


@pytest.mark.parametrize("machine,number", [
    ("x86_64", 321), ("aarch64", 280), ("arm64", 280), ("riscv64", 280),
    ("i386", 357), ("i686", 357), ("s390x", 351), ("ppc64le", 361),
])
def test_bpf_syscall_number_by_architecture(machine, number):
    assert syscall.bpf_syscall_number(machine) == number


def test_unknown_architecture_is_refused_by_name():
    with pytest.raises(syscall.UnknownArchitecture, match="architecture 'vax'") as e:
        syscall.bpf_syscall_number("vax")
    assert isinstance(e.value, syscall.BpfError) and e.value.errno == errno.ENOSYS


def test_import_succeeds_and_the_first_bpf_call_refuses_on_an_unknown_architecture():
    # A fresh interpreter whose uname says "vax": importing must work, calling must not.
    code = textwrap.dedent("""
        import os, types
        os.uname = lambda: types.SimpleNamespace(machine="vax")
        from vnetdp.datapath import maps, syscall
        try:
            syscall.obj_get("/nonexistent")
        except syscall.UnknownArchitecture as e:
            print("refused:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("refused:") and "'vax'" in out
