"""An ML2 mechanism driver that binds every port on every host, for the tests' control plane.

Nova's fake virt driver has no Open vSwitch and Neutron runs no agents, so no upstream driver
can bind a port (Nova would fail the boot with PortBindingFailed). This one binds each port to
its first segment as vif_type ``ovs``, status ACTIVE. Test use only.
"""

from neutron_lib import constants as const
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class AlwaysBindDriver(api.MechanismDriver):
    def initialize(self):
        pass

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OVS,
                                {portbindings.CAP_PORT_FILTER: True},
                                status=const.PORT_STATUS_ACTIVE)
            return

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2
