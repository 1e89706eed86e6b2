"""The overlay server: terminates tunnels, leases addresses, routes between its TUN and sessions."""
