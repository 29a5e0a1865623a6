# Twisted plugin: makes `twistd farmnet ...` available.
#
# There must never be an __init__.py in twisted/ or twisted/plugins/ of this checkout: Twisted extends
# twisted.plugins.__path__ with every twisted/plugins directory on sys.path, and an __init__.py here would
# shadow the real twisted package instead.
from twisted.application.service import ServiceMaker

farmnet = ServiceMaker("farmnet", "farmnet.tap", "farmnet render farm: server and render host", "farmnet")
