from pydantic_settings import SettingsConfigDict

from aiaas.settings import WorkerSettings


class ToySettings(WorkerSettings):
    model_config = SettingsConfigDict(env_prefix="AIAAS_TOY_", extra="ignore")
