"""The Kingdee sandbox: a K/3 Cloud compatible WebAPI server for ``GL_VOUCHER``, for tests, demos and trying
mappings without touching production (``kingdee-cdc sandbox``). A product feature, not a test double: its
protocol fidelity is proven by driving it with Kingdee's official Python SDK."""

from connector.sandbox._server import (
    DEFAULT_CONFIG,
    SHIPPED_LEDGER,
    Faults,
    RunningSandbox,
    SandboxConfig,
    SandboxServer,
    SandboxState,
    start_sandbox,
)

__all__ = ["DEFAULT_CONFIG", "SHIPPED_LEDGER", "Faults", "RunningSandbox", "SandboxConfig", "SandboxServer",
           "SandboxState", "start_sandbox"]
