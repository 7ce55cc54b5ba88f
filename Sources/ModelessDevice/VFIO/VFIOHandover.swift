import ModelessBus
import ModelessSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The three descriptors of an open VFIO device (container, group, device), as one process
/// hands them to another so that the device stays open across the first one's death: while
/// any process holds them, vfio-pci neither resets the function nor drops the container's
/// IOMMU mappings, and the next process adopts them instead of opening the device anew.
public struct VFIODescriptors: Sendable, Equatable {
    /// The device these descriptors open.
    public var address: PCIAddress
    /// The device's IOMMU group (`/dev/vfio/N`).
    public var group: Int
    /// `/dev/vfio/vfio`, with the group attached and the type-1 IOMMU set.
    public var container: Int32
    /// `/dev/vfio/N`.
    public var groupFD: Int32
    /// The device (`VFIO_GROUP_GET_DEVICE_FD`).
    public var device: Int32
    /// The device addresses (IOVAs) the holder maps its DMA buffers in: the successor maps its
    /// own elsewhere and removes these mappings once it serves.
    public var window: Range<UInt64>
    /// The kind of the message-signalled interrupts the holder enabled, with their eventfds
    /// in vector order (``interruptFDs``): VFIO signals these until someone sets others, so a
    /// successor that enables the same kind and count reads them instead of replacing them.
    /// Nil when the holder enabled none (or INTx, whose unmasking is per holder).
    public var interruptKind: InterruptKind?
    /// The eventfds of ``interruptKind``'s vectors.
    public var interruptFDs: [Int32] = []
    /// The holder's kept DMA memory (``VFIODevice/allocateKeptDMA(size:)``), which the
    /// successor maps with ``VFIODevice/inheritKeptDMA()``; nil when it had none.
    public var kept: VFIOKeptDMA?

    /// Descriptors of `address` in group `group`, whose holder maps DMA in `window`.
    public init(address: PCIAddress, group: Int, container: Int32, groupFD: Int32, device: Int32, window: Range<UInt64>) {
        self.address = address
        self.group = group
        self.container = container
        self.groupFD = groupFD
        self.device = device
        self.window = window
    }

    /// Closes the descriptors (those that are open).
    public func close() {
        for fd in [device, groupFD, container] + interruptFDs + [kept?.fd ?? -1] where fd >= 0 { _ = Glibc.close(fd) }
    }

    /// Closes the descriptors through `system`.
    func close(_ system: any SystemCalls) {
        for fd in [device, groupFD, container] where fd >= 0 { _ = system.close(fd) }
        for fd in interruptFDs + [kept?.fd ?? -1] where fd >= 0 { _ = Glibc.close(fd) }
    }
}

/// One message of the handover: which descriptor it carries, for which device and group.
/// Text (`modeless-vfio-handover 1 ROLE ADDRESS GROUP LOW-HIGH`, the holder's IOVA window in
/// hexadecimal; an interrupt's message ends with `KIND/VECTOR`, the kept memory's with the
/// device addresses it is mapped at, `LOW-HIGH` in hexadecimal), one per descriptor, so that a
/// receiver can check each descriptor's role and device before it keeps any.
struct VFIOHandoverMessage: Equatable {
    /// Which descriptor a message carries: the three of the device, in this order, then the
    /// kept DMA memory's memfd (when the holder had kept memory), then one interrupt eventfd
    /// per vector (none when the holder enabled no message-signalled ones).
    enum Role: String, CaseIterable {
        case container, group, device, kept, interrupt

        /// The roles every handover has, in order.
        static let required: [Role] = [.container, .group, .device]
    }

    static let magic = "modeless-vfio-handover"
    static let version = 1
    /// The largest message: what a receiver reads at most.
    static let capacity = 128

    var role: Role
    var address: PCIAddress
    var group: Int
    var window: Range<UInt64>
    /// An interrupt message's kind and vector.
    var vector: (kind: InterruptKind, index: Int)?
    /// A kept memory message's device addresses.
    var kept: Range<UInt64>?

    init(role: Role, address: PCIAddress, group: Int, window: Range<UInt64>, vector: (kind: InterruptKind, index: Int)? = nil,
         kept: Range<UInt64>? = nil) {
        self.role = role
        self.address = address
        self.group = group
        self.window = window
        self.vector = vector
        self.kept = kept
    }

    static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.role == rhs.role && lhs.address == rhs.address && lhs.group == rhs.group && lhs.window == rhs.window
            && lhs.vector?.kind == rhs.vector?.kind && lhs.vector?.index == rhs.vector?.index && lhs.kept == rhs.kept
    }

    var text: String {
        "\(Self.magic) \(Self.version) \(role.rawValue) \(address) \(group) \(Self.hex(window))"
            + (vector.map { " \($0.kind.rawValue)/\($0.index)" } ?? "") + (kept.map { " \(Self.hex($0))" } ?? "")
    }

    private static func hex(_ range: Range<UInt64>) -> String {
        "\(String(range.lowerBound, radix: 16))-\(String(range.upperBound, radix: 16))"
    }

    private static func range(_ word: Substring) -> Range<UInt64>? {
        let bounds = word.split(separator: "-").compactMap { UInt64($0, radix: 16) }
        guard bounds.count == 2, bounds[0] < bounds[1] else { return nil }
        return bounds[0]..<bounds[1]
    }

    /// Parses a message; nil, with the reason in `why`, for anything else.
    static func parse(_ text: String, why: inout String) -> VFIOHandoverMessage? {
        let words = text.split(separator: " ")
        guard words.count == 6 || words.count == 7, words[0] == Self.magic else {
            why = "not a VFIO handover message: \"\(text.prefix(80))\""
            return nil
        }
        guard Int(words[1]) == Self.version else {
            why = "handover version \(words[1]), expected \(Self.version)"
            return nil
        }
        guard let role = Role(rawValue: String(words[2])) else {
            why = "unknown descriptor role \"\(words[2])\""
            return nil
        }
        guard let address = PCIAddress(String(words[3])) else {
            why = "bad PCI address \"\(words[3])\""
            return nil
        }
        guard let group = Int(words[4]), group >= 0 else {
            why = "bad IOMMU group \"\(words[4])\""
            return nil
        }
        guard let window = range(words[5]) else {
            why = "bad IOVA window \"\(words[5])\""
            return nil
        }
        var vector: (kind: InterruptKind, index: Int)?
        var kept: Range<UInt64>?
        if role == .kept {
            guard words.count == 7, let range = range(words[6]), range.byteCount % UInt64(DMAPageSize.small) == 0 else {
                why = "a kept memory message needs its device addresses (LOW-HIGH, whole pages, in hexadecimal): \"\(text.prefix(80))\""
                return nil
            }
            kept = range
        } else if role == .interrupt {
            let parts = words.count == 7 ? words[6].split(separator: "/") : []
            guard parts.count == 2, let kind = InterruptKind(rawValue: String(parts[0])), kind != .intx,
                  let index = Int(parts[1]), index >= 0 else {
                why = "an interrupt message needs its MSI or MSI-X vector (KIND/INDEX): \"\(text.prefix(80))\""
                return nil
            }
            vector = (kind, index)
        } else if words.count != 6 {
            why = "not a VFIO handover message: \"\(text.prefix(80))\""
            return nil
        }
        return VFIOHandoverMessage(role: role, address: address, group: group, window: window, vector: vector, kept: kept)
    }
}

/// Handing an open VFIO device from a serving process to its successor (a warm standby).
///
/// The serving process runs a ``VFIOHandoverServer`` on a unix socket beside its claim; the
/// standby connects as soon as it starts and receives copies of the container, group and
/// device descriptors (`SCM_RIGHTS`), which it holds while it waits. When the serving process
/// dies, the device stays open in the standby, and the standby's ``VFIODevice`` adopts the
/// descriptors (``offer(_:)`` before opening the device) instead of opening `/dev/vfio/N`,
/// which would wait for the dead process's group and have vfio-pci enable and reset the
/// function. See docs/kernel-interfaces.md.
public enum VFIOHandover {
    private static let pending = Mutex<[PCIAddress: VFIODescriptors]>([:])
    private static let refusals = Mutex<[PCIAddress: String]>([:])

    /// Keeps `descriptors` for the next ``VFIODevice`` opened at their address in this
    /// process, which adopts them. Replaces (and closes) descriptors offered before.
    public static func offer(_ descriptors: VFIODescriptors) {
        let previous = pending.withLock { $0.updateValue(descriptors, forKey: descriptors.address) }
        if let previous, previous != descriptors { previous.close() }
    }

    /// Whether descriptors for `address` are waiting to be adopted.
    public static func isOffered(_ address: PCIAddress) -> Bool { pending.withLock { $0[address] != nil } }

    /// Closes the descriptors offered for `address`, if any.
    public static func withdraw(_ address: PCIAddress) { take(address)?.close() }

    /// Why the last descriptors offered for `address` were not adopted (the device was
    /// opened anew instead), or nil; reading it clears it.
    public static func refusal(for address: PCIAddress) -> String? { refusals.withLock { $0.removeValue(forKey: address) } }

    static func take(_ address: PCIAddress) -> VFIODescriptors? { pending.withLock { $0.removeValue(forKey: address) } }

    static func refuse(_ address: PCIAddress, _ why: String) { refusals.withLock { $0[address] = why } }

    /// Connects to the handover socket at `path` and receives the descriptors of `address`
    /// (in IOMMU group `group`). Every descriptor is checked (role, device, group, and that it
    /// is the VFIO file it claims to be); on any failure every descriptor received is closed.
    public static func receive(from path: String, address: PCIAddress, group: Int) throws(DeviceError) -> VFIODescriptors {
        try receive(from: path, address: address, group: group) { role in
            switch role {
            case .container: "/dev/vfio/vfio"
            case .group: "/dev/vfio/\(group)"
            case .device: "anon_inode:[vfio-device]"
            case .kept: "/memfd:" + VFIODevice.keptMemfdName
            case .interrupt: "anon_inode:[eventfd]"
            }
        }
    }

    /// ``receive(from:address:group:)`` with the file each role's descriptor must be (as
    /// `/proc/self/fd` names it) given by `expected`.
    static func receive(from path: String, address: PCIAddress, group: Int,
                        expected: (VFIOHandoverMessage.Role) -> String) throws(DeviceError) -> VFIODescriptors {
        let socket: UnixSocket
        do { socket = try UnixSocket.connect(to: path) } catch {
            throw DeviceError(error, address)
        }
        defer { socket.close() }
        do {
            let peer = try socket.peerCredentials()
            guard peer.userID == geteuid() else {
                throw DeviceError(.system, address, "the handover socket \(path) belongs to user \(peer.userID), not to this user (\(geteuid())): not taking descriptors from it")
            }
        } catch let error as SystemError { throw DeviceError(error, address) } catch let error as DeviceError { throw error } catch {
            throw DeviceError(.system, address, "\(error)")
        }
        var received: [VFIOHandoverMessage.Role: Int32] = [:]
        var interrupts: [Int32] = []
        var interruptKind: InterruptKind?
        var kept: Range<UInt64>?
        var window: Range<UInt64> = 0..<1
        func closeAll() { (Array(received.values) + interrupts).forEach { _ = Glibc.close($0) } }
        // The device's three descriptors, then its kept memory's memfd (if any), then its
        // interrupts' eventfds until the server ends the connection.
        var index = 0
        while true {
            let required = index < VFIOHandoverMessage.Role.required.count ? VFIOHandoverMessage.Role.required[index] : nil
            index += 1
            var buffer = [UInt8](repeating: 0, count: VFIOHandoverMessage.capacity)
            var descriptor: Int32?
            let length: Int
            do {
                length = try buffer.withUnsafeMutableBytes { bytes in try socket.receive(into: bytes, descriptor: &descriptor) }
            } catch let error as SystemError {
                closeAll()
                throw DeviceError(error, address)
            } catch {
                closeAll()
                throw DeviceError(.system, address, "\(error)")
            }
            if required == nil, length == 0, descriptor == nil { break }
            guard let fd = descriptor else {
                closeAll()
                throw DeviceError(.system, address, length == 0
                                  ? "the serving process at \(path) ended the handover before sending the \(required?.rawValue ?? "next") descriptor"
                                  : "the handover's \(required?.rawValue ?? "next") message came without a descriptor")
            }
            var why = ""
            let text = String(decoding: buffer.prefix(length), as: UTF8.self)
            guard let message = VFIOHandoverMessage.parse(text, why: &why) else {
                _ = Glibc.close(fd)
                closeAll()
                throw DeviceError(.system, address, "handover from \(path): \(why)")
            }
            // After the device's three: the kept memory once, before any interrupt; then interrupts.
            let role = required ?? (message.role == .kept && kept == nil && interrupts.isEmpty ? .kept : .interrupt)
            if role == .interrupt { interrupts.append(fd) } else { received[role] = fd }
            if role != .container, message.window != window {
                closeAll()
                throw DeviceError(.system, address, "handover from \(path): the \(role.rawValue) message names IOVA window \(message.window), the container's was \(window)")
            }
            window = message.window
            guard message.role == role, message.address == address, message.group == group else {
                closeAll()
                throw DeviceError(.system, address, "handover from \(path) offers the \(message.role.rawValue) of \(message.address) in group \(message.group), "
                                  + "expected the \(role.rawValue) of \(address) in group \(group)")
            }
            if let vector = message.vector {
                guard vector.index == interrupts.count - 1, interruptKind == nil || interruptKind == vector.kind else {
                    closeAll()
                    throw DeviceError(.system, address, "handover from \(path): interrupt \(vector.kind)/\(vector.index) out of order "
                                      + "(expected \(interruptKind.map { "\($0)" } ?? vector.kind.rawValue)/\(interrupts.count - 1))")
                }
                interruptKind = vector.kind
            }
            if role == .kept { kept = message.kept }
            let target = try? FileAccess.readLink("/proc/self/fd/\(fd)")
            // A memfd reads `/memfd:NAME (deleted)`.
            let matches = target == expected(role) || (role == .kept && target?.hasPrefix(expected(role) + " ") == true)
            guard matches else {
                closeAll()
                throw DeviceError(.system, address, "handover from \(path): the \(role.rawValue) descriptor is \(target ?? "unreadable"), expected \(expected(role))")
            }
        }
        var descriptors = VFIODescriptors(address: address, group: group, container: received[.container]!,
                                          groupFD: received[.group]!, device: received[.device]!, window: window)
        descriptors.interruptKind = interruptKind
        descriptors.interruptFDs = interrupts
        if let kept, let fd = received[.kept] {
            descriptors.kept = VFIOKeptDMA(fd: fd, deviceAddress: kept.lowerBound, size: Int(kept.byteCount))
        }
        return descriptors
    }
}

/// The serving side of ``VFIOHandover``: a listening unix socket whose every connection from
/// this user receives copies of an open device's descriptors, served by one thread until
/// ``stop()`` (which the owner calls before closing the device).
public final class VFIOHandoverServer: @unchecked Sendable {
    /// The socket's path.
    public let path: String
    private let listener: UnixSocket
    private var thread: SystemThread?
    private final class Count: Sendable { let value = Atomic<Int>(0) }
    private let served = Count()

    /// How many processes received the descriptors so far.
    public var handedOver: Int { served.value.load(ordering: .relaxed) }

    /// Listens at `path` (a stale socket file there, left by a process that died, is
    /// removed first) and hands `device`'s descriptors to every connection.
    public convenience init(device: VFIODevice, path: String) throws(DeviceError) {
        try self.init(descriptors: try device.handoverDescriptors(), path: path)
    }

    /// Listens at `path` and hands copies of `descriptors` (which the caller keeps open while
    /// this serves) to every connection.
    init(descriptors: VFIODescriptors, path: String) throws(DeviceError) {
        self.path = path
        if unlink(path) != 0, errno != ENOENT {
            throw DeviceError(.system, descriptors.address, "cannot remove the stale handover socket \(path): \(String(cString: strerror(errno)))")
        }
        do { listener = try UnixSocket.listen(at: path, backlog: 4) } catch { throw DeviceError(error, descriptors.address) }
        let listener = listener
        let served = served
        do {
            thread = try SystemThread(name: "vfio handover") {
                while let connection = try? listener.accept() {
                    defer { connection.close() }
                    guard let peer = try? connection.peerCredentials(), peer.userID == geteuid() else { continue }
                    var complete = true
                    for (message, fd) in Self.messages(descriptors) {
                        let bytes = Array(message.text.utf8)
                        do {
                            try bytes.withUnsafeBytes { raw in try connection.send(raw, attaching: fd) }
                        } catch {
                            complete = false
                            break
                        }
                    }
                    if complete { served.value.add(1, ordering: .relaxed) }
                }
            }
        } catch {
            listener.close()
            _ = unlink(path)
            throw DeviceError(error, descriptors.address)
        }
    }

    /// The messages that hand `descriptors` over, in order, each with its descriptor: the
    /// device's three, the kept memory's memfd (if any), the interrupts' eventfds.
    static func messages(_ descriptors: VFIODescriptors) -> [(VFIOHandoverMessage, Int32)] {
        func message(_ role: VFIOHandoverMessage.Role, vector: (kind: InterruptKind, index: Int)? = nil, kept: Range<UInt64>? = nil) -> VFIOHandoverMessage {
            VFIOHandoverMessage(role: role, address: descriptors.address, group: descriptors.group, window: descriptors.window,
                                vector: vector, kept: kept)
        }
        var messages = [(message(.container), descriptors.container), (message(.group), descriptors.groupFD), (message(.device), descriptors.device)]
        if let kept = descriptors.kept { messages.append((message(.kept, kept: kept.range), kept.fd)) }
        if let kind = descriptors.interruptKind {
            messages += descriptors.interruptFDs.enumerated().map { (message(.interrupt, vector: (kind, $0.offset)), $0.element) }
        }
        return messages
    }

    /// Stops serving: no process receives the descriptors after this returns. Removes the
    /// socket file. Idempotent.
    public func stop() {
        guard let running = thread else { return }
        thread = nil
        listener.shutdown()
        running.join()
        listener.close()
        _ = unlink(path)
    }

    deinit { stop() }
}
