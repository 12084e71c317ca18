"""Old import path of the item store, kept while branches in flight still use it: see stream_app.adapters.vectorstore."""

from stream_app.adapters.vectorstore import *  # noqa: F401,F403
from stream_app.adapters.vectorstore import __all__  # noqa: F401
