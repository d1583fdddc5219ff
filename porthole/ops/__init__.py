"""What an operator runs porthole with: learn mode, the Tecnativa drop-in, rules reload, the
metrics listener, --doctor.
"""
