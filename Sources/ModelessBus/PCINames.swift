import CLibPCI
import Synchronization

/// Names for vendor, device, subsystem and class ids from the pci.ids database, through libpci.
///
/// libpci loads the database on first use. Lookups are serialized because libpci's handle
/// is not thread-safe.
public final class PCINames: Sendable {
    /// The shared database at libpci's default location (`/usr/share/misc/pci.ids` on Debian).
    public static let shared = PCINames(idFile: nil)

    private let access: Mutex<OpaquePointerBox>

    /// Opens the database at `idFile`, or libpci's default when `nil`.
    public init(idFile: String?) {
        access = Mutex(OpaquePointerBox(modeless_pci_names_open(idFile)))
    }

    deinit {
        access.withLock { box in
            if let pointer = box.pointer { pci_cleanup(pointer) }
        }
    }

    /// The vendor's name, or nil when the database lacks it (or cannot be read).
    public func vendor(_ vendor: UInt16) -> String? {
        lookup { modeless_pci_vendor_name($0, $1, $2, Int32(vendor)) }
    }

    /// The device's name under `vendor`, or nil when the database lacks it.
    public func device(vendor: UInt16, device: UInt16) -> String? {
        lookup { modeless_pci_device_name($0, $1, $2, Int32(vendor), Int32(device)) }
    }

    /// The subsystem's name for a device, or nil when the database lacks it.
    public func subsystem(vendor: UInt16, device: UInt16, subsystemVendor: UInt16, subsystem: UInt16) -> String? {
        lookup {
            modeless_pci_subsystem_name($0, $1, $2, Int32(vendor), Int32(device), Int32(subsystemVendor), Int32(subsystem))
        }
    }

    /// The name of a 24-bit class code's base class and subclass.
    public func className(_ classCode: UInt32) -> String? {
        let classAndSubclass = Int32(classCode >> 8)
        // For a subclass it does not know, libpci appends the number ("Unclassified device [00ff]");
        // callers print numbers themselves.
        guard var name = lookup({ modeless_pci_class_name($0, $1, $2, classAndSubclass) }) else { return nil }
        if name.hasSuffix("]"), let open = name.lastIndex(of: "[") {
            name = String(name[..<open]).trimmingCharacters(in: " ")
        }
        return name
    }

    private func lookup(_ call: (UnsafeMutablePointer<pci_access>, UnsafeMutablePointer<CChar>, Int32) -> UnsafePointer<CChar>?) -> String? {
        access.withLock { box -> String? in
            guard let pointer = box.pointer else { return nil }
            var buffer = [CChar](repeating: 0, count: 256)
            return buffer.withUnsafeMutableBufferPointer { raw -> String? in
                guard let result = call(pointer, raw.baseAddress!, Int32(raw.count)) else { return nil }
                return String(cString: result)
            }
        }
    }
}

/// Carries libpci's handle inside the mutex.
struct OpaquePointerBox: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<pci_access>?
    init(_ pointer: UnsafeMutablePointer<pci_access>?) { self.pointer = pointer }
}
