"""Languages besides Python: each registers its problem formats, fence tags and executor with qrl.problems when
imported. Import this package before loading problems of any of them."""

from qrl.languages import q  # noqa: F401 -- registers Q
