"""ansible-test's pip bootstrap for a fresh sanity venv, without the download it normally makes.

ansible-test runs this as `python get_pip.py [pip options] pip==VERSION --no-setuptools --no-wheel`
(ansible_test/_util/target/setup/requirements.py, bootstrap()). It installs the interpreter's
bundled pip (ensurepip, offline), then the pip ansible-test asked for from the package index.
"""

from __future__ import annotations

import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")  # get-pip.py's own flags: nothing to install here

if __name__ == "__main__":
    subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
    wanted = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)
