"""The failover controller: pure decisions (policy), the scheduler's state machine, the loop."""
