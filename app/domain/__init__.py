"""The checkout domain: states, events, the transition table, receipt rules. Pure: stdlib only."""
