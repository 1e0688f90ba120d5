"""The router a target's configuration names (``router: {kind: ...}``, or the ``ingress:``
shorthand), bound to a client, and the custom resources each kind needs the API server to serve.
"""

from __future__ import annotations

from rollbackd.actions.routers.base import Router
from rollbackd.actions.routers.gateway_api import ROUTES, GatewayApiRouter
from rollbackd.actions.routers.ingress_nginx import IngressNginxRouter
from rollbackd.actions.routers.istio import Destination, IstioRouter
from rollbackd.config.settings import (
    GatewayApiRouterSettings,
    IngressNginxRouterSettings,
    IstioRouterSettings,
    RouterSettings,
)
from rollbackd.kube import KubeClient
from rollbackd.kube.objects import VIRTUALSERVICES, CustomResource


def router_for(settings: RouterSettings, *, kube: KubeClient, namespace: str) -> Router:
    """The router ``settings`` describe, for the objects in ``namespace``."""
    if isinstance(settings, IngressNginxRouterSettings):
        return IngressNginxRouter(kube=kube, namespace=namespace, ingress=settings.ingress)
    if isinstance(settings, GatewayApiRouterSettings):
        return GatewayApiRouter(
            kube=kube,
            namespace=namespace,
            route=settings.route,
            route_kind=settings.route_kind,
            canary_service=settings.canary_service,
            stable_service=settings.stable_service,
        )
    return IstioRouter(
        kube=kube,
        namespace=namespace,
        virtual_service=settings.virtual_service,
        canary=Destination(settings.canary.host, settings.canary.subset),
        stable=Destination(settings.stable.host, settings.stable.subset),
    )


def route_source(settings: RouterSettings, *, namespace: str) -> str:
    """The route object ``settings`` name, as routers call it in messages: ``HTTPRoute shop/web``."""
    if isinstance(settings, IngressNginxRouterSettings):
        return f"Ingress {namespace}/{settings.ingress}"
    if isinstance(settings, GatewayApiRouterSettings):
        return f"{settings.route_kind} {namespace}/{settings.route}"
    return f"VirtualService {namespace}/{settings.virtual_service}"


def required_resource(settings: RouterSettings) -> CustomResource | None:
    """The custom resource the router reads and writes (``None``: a built-in one, always served)."""
    if isinstance(settings, GatewayApiRouterSettings):
        return ROUTES[settings.route_kind]
    if isinstance(settings, IstioRouterSettings):
        return VIRTUALSERVICES
    return None


#: What to install when a router's resource is not served, by router kind.
INSTALL_HINTS = {
    "gateway-api": "install the Gateway API CRDs (standard channel) and a Gateway controller",
    "istio": "install Istio (its CRDs)",
}
