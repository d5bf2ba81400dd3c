"""The product catalog: what a purchase can be for, and which products cover which.

Built in: Microsoft's server products that need CALs and the two CAL suites.  An inventory file
may add products (``products:``), e.g. non-Microsoft subscriptions kept in the same register.
Rule ids refer to ../shared/reference/cal-licensing-rules.md (R12-R18).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Product:
    key: str
    name: str
    vendor: str = "Microsoft"
    kind: str = "cal"  # cal | subscription | perpetual
    cal_types: tuple[str, ...] = ("user", "device")
    base: str | None = None  # an additive CAL needs this base CAL too (R12-R14)
    includes: tuple[str, ...] = ()  # a suite grants these products' CAL rights (R16, R17)
    # Server products that run on Windows Server: their users also need a Windows Server CAL (R12, R15).
    layered_on: str | None = None


BUILT_IN: tuple[Product, ...] = (
    Product("windows-server", "Windows Server CAL"),
    Product("rds", "Remote Desktop Services CAL", base="windows-server"),
    Product("rms", "Active Directory Rights Management Services CAL", base="windows-server"),
    Product("exchange-standard", "Exchange Server Standard CAL", layered_on="windows-server"),
    Product("exchange-enterprise", "Exchange Server Enterprise CAL", base="exchange-standard",
            layered_on="windows-server"),
    Product("sharepoint-standard", "SharePoint Server Standard CAL", layered_on="windows-server"),
    Product("sharepoint-enterprise", "SharePoint Server Enterprise CAL", base="sharepoint-standard",
            layered_on="windows-server"),
    Product("skype-standard", "Skype for Business Server Standard CAL", layered_on="windows-server"),
    Product("skype-enterprise", "Skype for Business Server Enterprise CAL", base="skype-standard",
            layered_on="windows-server"),
    Product("sql-server", "SQL Server CAL", layered_on="windows-server"),
    # R16: Core CAL Suite = the base CALs.  R18: no suite includes RDS.
    Product("core-cal-suite", "Core CAL Suite",
            includes=("windows-server", "exchange-standard", "sharepoint-standard", "skype-standard")),
    # R17: Enterprise CAL Suite = Core + the Enterprise (additive) CALs and AD RMS.
    Product("enterprise-cal-suite", "Enterprise CAL Suite",
            includes=("windows-server", "exchange-standard", "sharepoint-standard", "skype-standard",
                      "exchange-enterprise", "sharepoint-enterprise", "skype-enterprise", "rms")),
)


class Catalog:
    def __init__(self, products: Iterable[Product] = BUILT_IN) -> None:
        self._products: dict[str, Product] = {}
        for product in products:
            self._products[product.key] = product

    def extended(self, products: Iterable[Product]) -> "Catalog":
        return Catalog([*self._products.values(), *products])

    def __contains__(self, key: str) -> bool:
        return key in self._products

    def get(self, key: str) -> Product | None:
        return self._products.get(key)

    def __getitem__(self, key: str) -> Product:
        return self._products[key]

    @property
    def products(self) -> Mapping[str, Product]:
        return MappingProxyType(self._products)

    def name(self, key: str) -> str:
        product = self._products.get(key)
        return product.name if product else key

    def grants(self, purchased: str, needed: str) -> bool:
        """Does a CAL of product ``purchased`` carry the rights of product ``needed``?"""
        if purchased == needed:
            return True
        product = self._products.get(purchased)
        return product is not None and needed in product.includes
