from django.apps import AppConfig


class RecommenderConfig(AppConfig):
    name = "recommender"
    verbose_name = "Recommender"

    def ready(self) -> None:
        from recommender import login_guard  # noqa: F401  (connects the sign-in failure counters)
