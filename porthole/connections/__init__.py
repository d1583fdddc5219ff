"""The client and daemon sides, as small parts each testable with a socketpair and a fake clock:
  client.py      ClientConnection: one client's server side: parse, answer, deliver, close
  exchange.py    Exchange (one request/response, the sink its answer is written into) and
                 OutputQueue (bytes queued for a client, and the ledger of what was delivered)
  upstream.py    UpstreamConnection: one daemon connection, h11's client side for its answers
  pool.py        UpstreamPool: fresh or pooled daemon connections, and the daemon's address
  sources.py     Relay (one exchange's answer, daemon to client, with back-pressure), Lookup,
                 SharedStream (one /events subscription for many watchers), CoalescedRead
                 (one GET known to be finite answered once for every client that asked before
                 it was sent; a later one waits a few seconds at most for an answer that stalls)
  listeners.py   Listener (accept with back-off), binding TCP and unix sockets
app.wiring and app.dispatch wire them to the policy.
"""
