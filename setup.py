"""Package discovery plus one mapping pyproject.toml cannot express beside discovery: the repository's
top-level ``alembic/`` (the source of truth for migrations) ships in the wheel as ``service.migrations``,
where ``service.db`` finds it with importlib.resources.  Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["search", "search.*", "service", "service.*"]),
              "service.migrations", "service.migrations.versions"],
    package_dir={"service.migrations": "alembic"},
)
