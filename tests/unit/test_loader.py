"""The datapath loader's pure parts: the include expander and the build id."""
from __future__ import annotations

from vnetdp.datapath.loader import build_id, expand_includes
from vnetdp.paths import BPF_DIR


def test_expand_includes_inlines_each_header_once_with_line_markers():
    text = expand_includes(BPF_DIR / "from_container.c")
    assert '#include "' not in text
    assert text.count("#ifndef VND_COMMON_H") == 1
    assert f'#line 1 "{(BPF_DIR / "lib" / "maps.h").resolve()}"' in text


def test_expand_includes_points_back_at_the_including_line(tmp_path):
    (tmp_path / "a.h").write_text("int a;\n")
    (tmp_path / "main.c").write_text('// one\n#include "a.h"\nint main;\n#include "a.h"\nint end;\n')
    main = (tmp_path / "main.c").resolve()
    assert expand_includes(tmp_path / "main.c") == (
        f'#line 1 "{main}"\n// one\n#line 1 "{(tmp_path / "a.h").resolve()}"\nint a;\n'
        f'#line 3 "{main}"\nint main;\n#line 5 "{main}"\nint end;\n')


def test_build_id_changes_with_flags():
    assert build_id(()) != build_id(("-DX=1",))
    assert build_id(("-DX=1",)) == build_id(("-DX=1",))
