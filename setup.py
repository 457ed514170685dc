"""ofa-deploy: Once-for-All subnets, compiled and tuned with TVM for the device they run on."""

from setuptools import setup

setup(
    name="ofa-deploy",
    version="0.1.0",
    description="Once-for-All MobileNetV3 subnet search with a TVM compiler in the loop",
    python_requires=">=3.10",
    # One namespace for users (ofa_deploy.*), top-level folders for us: README.md, "Layout", lists each
    # package (top to bottom in import order) and what it owns. Every package is listed here; subpackages
    # of a mapped folder (compile/worker/) follow its package_dir entry.
    packages=["ofa_deploy", "ofa_deploy.cli", "ofa_deploy.search", "ofa_deploy.train", "ofa_deploy.latency",
              "ofa_deploy.compile", "ofa_deploy.compile.worker", "ofa_deploy.tuning_logs",
              "ofa_deploy.search_space", "ofa_deploy.targets"],
    package_data={"ofa_deploy": ["defaults/*"]},
    package_dir={
        "ofa_deploy": "ofa_deploy",
        "ofa_deploy.search_space": "search_space",
        "ofa_deploy.compile": "compile",
        "ofa_deploy.targets": "targets",
    },
    install_requires=[line.split("#")[0].strip() for line in open("requirements.txt") if line.split("#")[0].strip()],
    entry_points={"console_scripts": ["ofa-deploy=ofa_deploy.cli:main"]},
)
