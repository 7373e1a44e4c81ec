from django.apps import AppConfig


class RecommenderConfig(AppConfig):
    name = "recommender"
    verbose_name = "Recommender"

    def ready(self) -> None:
        from recommender import (  # noqa: F401  (connect signal receivers)
            login_guard,  # sign-in failure counters
            receivers,  # catalog changes → embeddings queued, cached answers retired
        )
