"""coordactors: distributed coordination as actors."""

from setuptools import find_packages, setup

BACKENDS = {
    "file": ["fasteners>=0.18"],
    "ipc": ["posix_ipc>=1.1", "fasteners>=0.18"],
    # hiredis: redis-py parses replies and packs pipelines in C with it (16 callers sharing a session: ~2.6x -> ~3.1x one caller).
    "redis": ["redis>=5.0", "hiredis>=2.0"],
    "zookeeper": ["kazoo>=2.9"],
    "memcached": ["pymemcache>=4.0"],
    "postgresql": ["psycopg2-binary>=2.9"],
    "mysql": ["PyMySQL>=1.1"],
    "etcd": ["etcd3gw>=2.4", "requests>=2.28"],
    "consul": ["py-consul>=1.5"],
}
ALL = sorted({requirement for requirements in BACKENDS.values() for requirement in requirements})

with open("README.rst", encoding="utf-8") as readme:
    LONG_DESCRIPTION = readme.read()

setup(
    name="coordactors",
    version="0.1.0",
    description="Distributed coordination (groups, leaders, fenced locks, pushed events) as pykka actors",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/x-rst",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["coordactors", "coordactors.*"]),
    package_data={"coordactors": ["py.typed"]},
    install_requires=["pykka>=4.0,<5", "futurist>=3.0", "attrs>=23.1"],
    extras_require={
        **BACKENDS,
        "all": ALL,
        "test": [*ALL, "pytest>=8", "pytest-timeout>=2.2", "hypothesis>=6.100", "tooz==8.1.0"],
        "bench": ["tooz==8.1.0", "hdrhistogram>=0.10", "matplotlib>=3.8", "sysv_ipc>=1.1", "py-spy>=0.3", "pyinstrument>=4.6"],
    },
    entry_points={"console_scripts": ["coordactors-demo=coordactors.demo:main", "coordactors=coordactors.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: System :: Distributed Computing",
        "Typing :: Typed",
    ],
)
