"""The command-line client (``poold jobs``, ``run``, ``logs``…), built on :mod:`poold.client`.

Shaped like kubectl: ``VERB`` or ``RESOURCE VERB``, ``-o table|wide|json|yaml``,
``-q`` for ids only, ``-w`` to watch, contexts in a config file, and exit codes
that scripts can rely on (see :mod:`poold.ctl.common`).
"""

from __future__ import annotations

import copy

import click

from poold.ctl.config import config
from poold.ctl.jobs import artifacts, jobs, logs, output, run
from poold.ctl.resources import api, modules, pool, runtimes


def register(main: click.Group) -> None:
    main.add_command(run, "run")
    submit = copy.copy(run)
    submit.short_help = "Same as run (the name older scripts use)."
    main.add_command(submit, "submit")
    main.add_command(jobs)
    main.add_command(logs)
    main.add_command(output)
    main.add_command(artifacts)
    main.add_command(modules)
    main.add_command(pool)
    main.add_command(runtimes)
    main.add_command(config)
    main.add_command(api)
