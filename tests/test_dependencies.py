"""A dependency outside the declared ranges is refused in one line, before any import can crash."""
import subprocess
import sys

from tamis.dependencies import unsupported


def plant_distribution(folder, name: str, version: str) -> None:
    """A real installed-distribution record (a .dist-info) that shadows the one in site-packages."""
    dist = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_this_environment_is_inside_every_declared_range():
    assert unsupported() == ()


def run_cli(tmp_path, *args):
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "tamis", *args], capture_output=True, text=True, env=env, timeout=120)


def test_an_old_beam_fails_in_one_line_naming_package_version_and_range(tmp_path):
    plant_distribution(tmp_path / "site", "apache-beam", "2.60.0")
    done = run_cli(tmp_path, "selectors")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tamis: apache-beam 2.60.0 is installed, but tamis supports apache-beam>=2.70,<3: pip install 'apache-beam>=2.70,<3'"]
    assert done.stdout == ""


def test_every_problem_is_in_the_one_line_and_the_api_raises_the_same(tmp_path):
    plant_distribution(tmp_path / "site", "transformers", "4.40.0")
    plant_distribution(tmp_path / "site", "pyarrow", "26.0.0")
    done = run_cli(tmp_path, "select", "--help")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "transformers 4.40.0 is installed, but tamis supports transformers>=4.56" in done.stderr
    assert "pyarrow 26.0.0 is installed, but tamis supports pyarrow>=16,<26" in done.stderr
    code = ("import tamis\n"
            "from tamis.errors import ConfigError\n"
            "try:\n    tamis.select(pool=['x.jsonl'], out='o')\n"
            "except ConfigError as e:\n    print(type(e).__name__, e)\n")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    api = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert api.stdout.startswith("DependencyError ") and "transformers 4.40.0 is installed" in api.stdout, api.stderr
    assert not (tmp_path / "o").exists()
