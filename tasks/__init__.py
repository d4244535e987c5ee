"""Background jobs: the chatbot job, its runtime and model providers.

``arq tasks.WorkerSettings`` runs a worker; the settings load on first use, so the web
process can import this package without reading worker configuration.
"""


def __getattr__(name: str):
    if name == "WorkerSettings":
        from tasks.worker import WorkerSettings

        return WorkerSettings
    raise AttributeError(name)
