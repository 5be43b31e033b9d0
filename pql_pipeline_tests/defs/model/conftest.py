"""Fixtures shared with the feature tests: ``fconn`` (the warehouse connection with the
input tables) and ``world`` (writes hand-made rows), re-exported so pytest finds them here."""

from pql_pipeline_tests.defs.features.conftest import fconn as fconn
from pql_pipeline_tests.defs.features.conftest import world as world
