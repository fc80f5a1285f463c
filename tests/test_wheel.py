"""The installed wheel works outside the checkout: builders, schemas and card templates ship inside it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(dist.glob("hubsets-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    # Dependencies come from this interpreter's site-packages (a .pth line), hubsets itself only from the wheel.
    site = Path(sysconfig.get_paths()["purelib"])
    target = next((env_dir / "lib").glob("python3*/site-packages"))
    (target / "deps.pth").write_text(str(site) + "\n")
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    r = subprocess.run([str(python), "-c",
                        "import hubsets, sys; print(hubsets.__file__)"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and str(target) in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(env_dir / "bin" / "hubsets"), "list"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "skvqa" in r.stdout, r.stderr
    r = subprocess.run([str(python), "-c", (
        "from pathlib import Path; from hubsets.testing import samples; from hubsets.build import build; "
        "from hubsets.builder import Options; samples.make_skvqa(Path('src'), images=6, qa_per_image=2); "
        "m = build('skvqa', Options(source=Path('src')), Path('out'), progress=False); "
        "print(m['configs']['ir_cap']['splits'])")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "train" in r.stdout, r.stderr
    assert "SK-VQA" in (tmp_path / "out" / "README.md").read_text()
