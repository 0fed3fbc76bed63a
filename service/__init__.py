"""mixq service: REST API, database, migrations and workers around the ``search`` library."""
