import Logging
import ModelessSystem

#if canImport(Glibc)
import Glibc
#endif

/// A container: one process's namespace of logical devices (or, for the kernel emulation, the
/// one namespace all kernel-mode providers share), with the provider API that creates and
/// destroys devices in it and the consumer API that opens, uses and closes devices anywhere.
///
/// A consumer names a device `container/device`; a bare `device` means this container. Within
/// a container requests are direct calls to the provider's handlers. To another container
/// they travel over its socket in the ``ContainerDirectory``, and the provider's handlers run
/// on a thread of the provider's process serving that consumer.
///
/// A serving container runs until ``shutdown()``; one that does not serve ends when released.
public final class LogicalContainer: @unchecked Sendable {
    /// Where the container's providers run.
    public enum Placement: String, Sendable {
        /// A user process, its own container.
        case user
        /// The kernel emulation: the single container named `kernel`.
        case kernelEmulation = "kernel-emulation"
    }

    /// The container's name: the first part of its devices' names (`name/device`).
    public let name: String
    /// Where its providers run: a user process or the kernel emulation.
    public let placement: Placement
    /// Where it serves and finds other containers.
    public let directory: ContainerDirectory
    /// How synchronous requests travel to and from other containers.
    public let transport: RequestTransport

    let lock = ConditionLock()
    var devices: [String: ProvidedDevice] = [:]
    var consumers: [ConsumerID: ConsumerRecord] = [:]
    var handles: [UInt64: OpenHandle] = [:]
    var nextSlot: UInt64 = 1
    var nextConsumer: UInt64 = 1
    var marshallers: [UInt32: any RequestMarshaller] = [:]
    private var server: ContainerServer?
    /// The server of a serving container (tests widen its windows through it).
    var containerServer: ContainerServer? { lock.withLock { server } }
    private var worker: LocalAsyncWorker?
    private var isShutDown = false

    /// Starts a container. With `serving`, it listens at `directory`'s socket for `name` so
    /// that other processes can open its devices; a running container of the same name is an
    /// error (``LogicalDeviceError/Kind/nameInUse``), a socket left by one that ended is replaced.
    /// `transport` sets how its synchronous requests to other containers travel and how its
    /// server waits for requests. The server logs to `logger` (by default nowhere): at `debug`
    /// connections accepted and ended, at `info` what it refused or could not do (a connection
    /// from another user, an accept or poll failure, no thread for more connections), with the
    /// container's name in the metadata key `container`.
    public init(
        name: String, placement: Placement = .user, directory: ContainerDirectory = .standard, serving: Bool = true,
        transport: RequestTransport = .standard,
        logger: Logger = Logger(label: "modeless.container", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws(LogicalDeviceError) {
        try LogicalDeviceName.validate(name, what: "container")
        if placement == .user && name == LogicalDeviceName.kernelContainer {
            throw LogicalDeviceError(.invalidName, "'kernel' is the kernel emulation's container: choose another name for a user container")
        }
        if placement == .kernelEmulation && name != LogicalDeviceName.kernelContainer {
            throw LogicalDeviceError(.invalidName, "the kernel emulation's container is always named 'kernel', not '\(name)'")
        }
        self.name = name
        self.placement = placement
        self.directory = directory
        self.transport = transport
        if serving {
            var logger = logger
            logger[metadataKey: "container"] = "\(name)"
            server = try ContainerServer(container: self, logger: logger)
        }
    }

    /// The kernel emulation's container, `kernel`.
    public static func kernelEmulation(
        directory: ContainerDirectory = .standard, transport: RequestTransport = .standard,
        logger: Logger = Logger(label: "modeless.container", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws(LogicalDeviceError) -> LogicalContainer {
        try LogicalContainer(name: LogicalDeviceName.kernelContainer, placement: .kernelEmulation, directory: directory, transport: transport,
                             logger: logger)
    }

    deinit { shutdown() }

    // MARK: Provider API

    /// Creates device `device` in this container and makes it available to consumers.
    @discardableResult
    public func createDevice(_ device: String, handlers: LogicalDeviceHandlers) throws(LogicalDeviceError) -> LogicalDeviceName {
        let name = try LogicalDeviceName(container: self.name, device: device)
        try lock.withLock { () throws(LogicalDeviceError) in
            guard !isShutDown else { throw LogicalDeviceError(.notOpen, "container \(self.name) is shut down") }
            guard devices[device] == nil else {
                throw LogicalDeviceError(.nameInUse, "\(name) already exists: destroy it first or choose another name")
            }
            devices[device] = ProvidedDevice(name: device, handlers: handlers)
        }
        return name
    }

    /// Destroys device `device`; refused while any consumer has it open.
    public func destroyDevice(_ device: String) throws(LogicalDeviceError) {
        try lock.withLock { () throws(LogicalDeviceError) in
            guard let provided = devices[device] else {
                throw LogicalDeviceError(.noSuchDevice, "there is no device \(name)/\(device) to destroy")
            }
            guard provided.consumerCount == 0 else {
                throw LogicalDeviceError(
                    .deviceBusy, "\(name)/\(device) has \(provided.consumerCount) consumer(s): it can be destroyed once they close it")
            }
            devices[device] = nil
        }
    }

    /// The devices this container provides, sorted.
    public var deviceNames: [String] { lock.withLock { devices.keys.sorted() } }

    /// The consumers that have `device` open, in the order they opened it.
    public func consumers(of device: String) -> [ConsumerID] {
        lock.withLock { consumers.filter { $0.value.device.name == device }.map(\.key).sorted { $0.rawValue < $1.rawValue } }
    }

    /// Registers how non-standard requests with `code` cross containers (needed by both sides).
    public func register(_ marshaller: any RequestMarshaller, forCode code: UInt32) {
        lock.withLock { marshallers[code] = marshaller }
    }

    // MARK: Consumer API

    /// Opens `name` (`container/device`, or a device of this container) and returns a handle
    /// with a new consumer id.
    public func open(_ name: String) throws(LogicalDeviceError) -> LogicalDeviceHandle {
        let target = try LogicalDeviceName(parsing: name, defaultContainer: self.name)
        let opened: OpenHandle
        let consumer: ConsumerID
        if target.container == self.name {
            let (device, id) = try openLocal(target.device, processID: getpid(), connection: nil)
            opened = .local(device, id)
            consumer = id
        } else {
            let remote = try RemoteHandle.open(target, directory: directory, transport: transport)
            opened = .remote(remote)
            consumer = remote.consumerID
        }
        return lock.withLock {
            let slot = nextSlot
            nextSlot += 1
            handles[slot] = opened
            return LogicalDeviceHandle(name: target, consumerID: consumer, slot: slot, owner: ObjectIdentifier(self))
        }
    }

    /// Whether `handle`'s synchronous requests travel through shared memory (a device in
    /// another container, with shared memory agreed at open) rather than a socket or a call.
    public func sharesMemory(_ handle: LogicalDeviceHandle) -> Bool {
        guard handle.owner == ObjectIdentifier(self), case .remote(let remote)? = lock.withLock({ handles[handle.slot] }) else { return false }
        return remote.sharesMemory
    }

    /// Sends the request in `block` (claimed from its chain and filled in) and waits for the
    /// provider to finish it. The block's output then holds the answer; a failure is thrown.
    public func send(_ handle: LogicalDeviceHandle, _ block: ParameterBlock) throws(LogicalDeviceError) {
        switch try prepareToSend(block, on: handle) {
        case .local(let device, let consumer):
            if let failure = invoke(device, consumer: consumer, block: block) { throw failure }
        case .remote(let remote):
            try remote.sendSynchronously(block, marshaller: marshaller(for: block))
        }
    }

    /// Sends the request in `block` without waiting: `completion` runs once, on another thread,
    /// with the block (or the failure) and `context`. The chain must not be touched until then.
    /// Errors found before sending (a closed handle, a provider known to have ended) are thrown
    /// instead, and `completion` is not called.
    public func send<Context: Sendable>(
        _ handle: LogicalDeviceHandle, _ block: ParameterBlock, context: Context,
        completion: @escaping @Sendable (Result<ParameterBlock, LogicalDeviceError>, Context) -> Void
    ) throws(LogicalDeviceError) {
        switch try prepareToSend(block, on: handle) {
        case .local(let device, let consumer):
            try localWorker().submit {
                let failure = self.invoke(device, consumer: consumer, block: block)
                completion(failure.map { .failure($0) } ?? .success(block), context)
            }
        case .remote(let remote):
            try remote.sendAsynchronously(block, marshaller: marshaller(for: block)) { result in completion(result, context) }
        }
    }

    /// Closes `handle`: the provider's close handler runs for its consumer id. Waits for the
    /// handle's asynchronous requests still in flight. A second close is an error.
    public func close(_ handle: LogicalDeviceHandle) throws(LogicalDeviceError) {
        let opened = try lookUp(handle)
        let removed = lock.withLock { handles.removeValue(forKey: handle.slot) != nil }
        guard removed else { throw LogicalDeviceError(.notOpen, "\(handle) is already closed") }
        switch opened {
        case .local(_, let consumer): closeConsumer(consumer)
        case .remote(let remote): try remote.close()
        }
    }

    /// Stops serving: consumers in other processes see their provider end; this container's
    /// own handles to other containers are closed. Idempotent.
    public func shutdown() {
        let (server, worker, remotes): (ContainerServer?, LocalAsyncWorker?, [RemoteHandle]) = lock.withLock {
            guard !isShutDown else { return (nil, nil, []) }
            isShutDown = true
            let remotes = handles.values.compactMap { opened -> RemoteHandle? in
                if case .remote(let remote) = opened { return remote } else { return nil }
            }
            handles.removeAll()
            defer { self.server = nil; self.worker = nil }
            return (self.server, self.worker, remotes)
        }
        server?.stop()
        worker?.stop()
        for remote in remotes { remote.abandon() }
    }

    // MARK: Shared by local calls and the server

    func lookUp(_ handle: LogicalDeviceHandle) throws(LogicalDeviceError) -> OpenHandle {
        guard handle.owner == ObjectIdentifier(self) else {
            throw LogicalDeviceError(.foreignHandle, "\(handle) was opened by another container: use the container that opened it")
        }
        guard let opened = lock.withLock({ handles[handle.slot] }) else {
            throw LogicalDeviceError(.notOpen, "\(handle) is not open (closed already, or never opened)")
        }
        return opened
    }

    /// Checks the handle and the block for either kind of send, and addresses the block.
    private func prepareToSend(_ block: ParameterBlock, on handle: LogicalDeviceHandle) throws(LogicalDeviceError) -> OpenHandle {
        let opened = try lookUp(handle)
        guard block.requestType != nil else {
            throw LogicalDeviceError(.malformedMessage, "set the block's request type before sending it")
        }
        block.setDeviceName(handle.name)
        block.setStatus(nil)
        return opened
    }

    func marshaller(for block: ParameterBlock) -> (any RequestMarshaller)? {
        guard block.requestType == .nonStandard else { return nil }
        return lock.withLock { marshallers[block.code] }
    }

    /// Opens a device of this container for a consumer in `processID` (over `connection`, or
    /// nil when the consumer is in this container).
    func openLocal(_ device: String, processID: Int32, connection: ObjectIdentifier?) throws(LogicalDeviceError) -> (ProvidedDevice, ConsumerID) {
        let (provided, consumer) = try lock.withLock { () throws(LogicalDeviceError) in
            guard let provided = devices[device] else {
                throw LogicalDeviceError(
                    .noSuchDevice, "there is no device \(name)/\(device): `modeless devices` lists the devices there are")
            }
            let consumer = ConsumerID(rawValue: nextConsumer)
            nextConsumer += 1
            // Recorded before the open handler runs, so that a destroy cannot slip in between.
            consumers[consumer] = ConsumerRecord(device: provided, processID: processID, connection: connection)
            provided.consumerCount += 1
            return (provided, consumer)
        }
        do {
            try provided.handlers.open(consumer)
        } catch {
            lock.withLock {
                consumers[consumer] = nil
                provided.consumerCount -= 1
            }
            throw LogicalDeviceError.from(error)
        }
        return (provided, consumer)
    }

    /// Runs `device`'s request handler for `block`; returns its failure, also written into the block.
    func invoke(_ device: ProvidedDevice, consumer: ConsumerID, block: ParameterBlock) -> LogicalDeviceError? {
        do {
            try device.handlers.request(RequestContext(consumer: consumer, block: block, container: self))
            block.setStatus(nil)
            return nil
        } catch {
            let failure = LogicalDeviceError.from(error)
            block.setStatus(failure.kind)
            return failure
        }
    }

    /// Runs the close handler for `consumer` if it is still open: exactly once per open.
    func closeConsumer(_ consumer: ConsumerID) {
        let record: ConsumerRecord? = lock.withLock {
            guard let record = consumers.removeValue(forKey: consumer) else { return nil }
            record.device.consumerCount -= 1
            return record
        }
        record?.device.handlers.close(consumer)
    }

    /// The consumer's record, if `consumer` is open.
    func consumerRecord(_ consumer: ConsumerID) -> ConsumerRecord? { lock.withLock { consumers[consumer] } }

    private func localWorker() throws(LogicalDeviceError) -> LocalAsyncWorker {
        try lock.withLock { () throws(LogicalDeviceError) in
            if let worker { return worker }
            do {
                let created = try LocalAsyncWorker(name: "ld-\(name)")
                worker = created
                return created
            } catch {
                throw LogicalDeviceError(.system, "cannot start the container's request thread: \(error)")
            }
        }
    }
}

/// A device this container provides.
final class ProvidedDevice: @unchecked Sendable {
    let name: String
    let handlers: LogicalDeviceHandlers
    /// Guarded by the container's lock.
    var consumerCount = 0

    init(name: String, handlers: LogicalDeviceHandlers) {
        self.name = name
        self.handlers = handlers
    }
}

/// Who holds one open of a provided device.
struct ConsumerRecord {
    let device: ProvidedDevice
    let processID: Int32
    let connection: ObjectIdentifier?
}

/// What a consumer handle refers to.
enum OpenHandle {
    case local(ProvidedDevice, ConsumerID)
    case remote(RemoteHandle)
}
