"""The default settings module: ``base`` for development and the demo, ``production`` when
``DJANGO_DEBUG=false``. Point ``DJANGO_SETTINGS_MODULE`` at ``recommender.settings.production`` or
``recommender.settings.test`` to choose one explicitly.
"""

from recommender.settings.base import *  # noqa: F403
from recommender.settings.base import DEBUG

if not DEBUG:
    from recommender.settings.production import *  # noqa: F403
