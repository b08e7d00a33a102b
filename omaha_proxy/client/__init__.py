"""What update_engine would do: its verdict on a response, a simulated machine, its HTTP
client and the fleet simulator.
"""
