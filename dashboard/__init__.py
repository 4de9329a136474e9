"""The mbx dashboard (Streamlit): broker status, the unified portfolio, routing, configuration.

It reads Postgres through ``workers.readmodel`` as the ``mbx_dashboard`` database role, asks the
workers over the request/reply endpoints the CLI uses, and changes things only through
``workers.ops`` (validated, compare-and-set, audited). It imports no worker. `mbx dashboard`
serves it; `mbx up` starts it too.
"""
