// libpci as Swift sees it. pci_lookup_name() and libpci's error callbacks are variadic,
// which Swift cannot call or implement, so they are wrapped here.
#include <pci/pci.h>
#include <stdarg.h>
#include <stdio.h>

static void modeless_pci_quiet(char *msg, ...) { (void)msg; }

/// A libpci handle used only for the ID database; its error callbacks never exit the process.
static inline struct pci_access *modeless_pci_names_open(const char *idFile) {
    struct pci_access *access = pci_alloc();
    if (access == NULL) return NULL;
    access->error = modeless_pci_quiet;
    access->warning = modeless_pci_quiet;
    access->debug = modeless_pci_quiet;
    if (idFile != NULL) pci_set_name_list_path(access, (char *)idFile, 0);
    return access;
}

static inline const char *modeless_pci_vendor_name(struct pci_access *a, char *buf, int size, int vendor) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_VENDOR | PCI_LOOKUP_NO_NUMBERS, vendor);
}

static inline const char *modeless_pci_device_name(struct pci_access *a, char *buf, int size, int vendor, int device) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_DEVICE | PCI_LOOKUP_NO_NUMBERS, vendor, device);
}

static inline const char *modeless_pci_subsystem_name(struct pci_access *a, char *buf, int size,
                                                      int vendor, int device, int subvendor, int subdevice) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_SUBSYSTEM | PCI_LOOKUP_DEVICE | PCI_LOOKUP_NO_NUMBERS,
                           vendor, device, subvendor, subdevice);
}

static inline const char *modeless_pci_class_name(struct pci_access *a, char *buf, int size, int classCode16) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_CLASS | PCI_LOOKUP_NO_NUMBERS, classCode16);
}

static inline const char *modeless_pci_progif_name(struct pci_access *a, char *buf, int size, int classCode16, int progIf) {
    return pci_lookup_name(a, buf, size, PCI_LOOKUP_PROGIF | PCI_LOOKUP_NO_NUMBERS, classCode16, progIf);
}
