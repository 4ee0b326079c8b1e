"""Preloaded by the primary (forkhost.toml: preload), before it forks the
template: creates the sample's shared objects (l2fwd.setup), as the
master of DPDK's l2fwd_fork creates its mempool and rings."""

import l2fwd

l2fwd.setup()
