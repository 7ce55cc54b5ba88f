import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// What a running container says about itself: its placement, process and devices.
public struct ContainerListing: Sendable, Equatable {
    /// One device of a listed container.
    public struct Device: Sendable, Equatable {
        /// The device's name in its container.
        public var name: String
        /// How many consumers have it open.
        public var consumers: Int

        /// A device named `name` open by `consumers` consumers.
        public init(name: String, consumers: Int) {
            self.name = name
            self.consumers = consumers
        }
    }

    /// The container's name.
    public var name: String
    /// Where its providers run.
    public var placement: LogicalContainer.Placement
    /// The process serving it.
    public var processID: Int32
    /// Its devices, sorted by name.
    public var devices: [Device]

    init(container: LogicalContainer) {
        name = container.name
        placement = container.placement
        processID = getpid()
        devices = container.lock.withLock {
            container.devices.values.map { Device(name: $0.name, consumers: $0.consumerCount) }.sorted { $0.name < $1.name }
        }
    }

    /// Tab-separated lines: the container, then one per device.
    var encoded: String {
        (["\(name)\t\(placement.rawValue)\t\(processID)"] + devices.map { "\($0.name)\t\($0.consumers)" }).joined(separator: "\n")
    }

    init(decoding text: String) throws(LogicalDeviceError) {
        let lines = text.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
        guard let head = lines.first, head.count == 3, let placement = LogicalContainer.Placement(rawValue: head[1]),
              let processID = Int32(head[2])
        else { throw WireMessage.malformed("a container listing must start with name, placement and process id") }
        var devices: [Device] = []
        for line in lines.dropFirst() {
            guard line.count == 2, let consumers = Int(line[1]) else { throw WireMessage.malformed("a device line must be name and consumer count") }
            devices.append(Device(name: line[0], consumers: consumers))
        }
        self.name = head[0]
        self.placement = placement
        self.processID = processID
        self.devices = devices
    }
}

/// Finds the running containers and their devices: the registry of user containers and the
/// kernel emulation's container, kept as the sockets in a ``ContainerDirectory``.
public struct ContainerRegistry: Sendable {
    /// The directory whose sockets are the running containers.
    public let directory: ContainerDirectory

    /// The registry of the containers in `directory`.
    public init(directory: ContainerDirectory = .standard) { self.directory = directory }

    /// Every container that answers, sorted by name. Sockets nobody listens on (left by a
    /// container that ended) are skipped.
    public func runningContainers() -> [ContainerListing] {
        directory.containerNames().compactMap { try? listing(of: $0) }
    }

    /// What container `name` provides.
    public func listing(of name: String) throws(LogicalDeviceError) -> ContainerListing {
        let socket = try RemoteHandle.connect(to: name, directory: directory)
        defer { socket.close() }
        let buffer = MessageBuffer()
        let reply = try RemoteHandle.exchange(
            socket, buffer, length: buffer.build(WireMessage(kind: .list), text: ""), expecting: .listReply, what: "list \(name)")
        return try ContainerListing(decoding: buffer.text(reply))
    }
}
