"""Traffic routers: how a canary's share of the requests is read and taken away.

One module per router, none knowing another (the ``routers`` import contract): ingress-nginx
(:mod:`.ingress_nginx`), Gateway API HTTPRoute and GRPCRoute (:mod:`.gateway_api`) and Istio
VirtualService (:mod:`.istio`); :mod:`.base` says what every router does (:class:`.base.Router`)
and :mod:`.select` builds the one a target's ``router`` configuration names.
"""
