"""Stage logic of the AIGC model lifecycle; DAGs only wire these stages together."""
