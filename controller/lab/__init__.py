"""The lab: host preparation and virt-type detection, the lab guest image, and lab VMs under libvirt.

Public entry points (no CLI needed)::

    from controller.lab import host, image, vms, metadata
    host.ensure_daemons(); host.detect_virt_type(settings.virt_type)
    image.ensure_image(settings) -> image.ImageInfo
    vms.create_lab_vm(settings, name, ...) -> vms.LabVm ; vms.destroy_lab_vm(settings, name)
    vms.list_lab_vms(settings) ; vms.wait_for_ssh(meta, timeout)
    metadata.read(dom) -> metadata.LabMetadata | None
"""
