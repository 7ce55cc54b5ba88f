import ModelessBus
import ModelessDevice
import ModelessRuntime
import ModelessSystem

/// A driver for Intel's 82540EM (QEMU's `-device e1000`) and 82574L (`-device e1000e`), once
/// for every mode, in the kernel's vocabulary:
///
/// - **Start**: the device is confirmed before it is touched (its ids, STATUS not all-ones),
///   then brought to a known state before bus mastering and interrupts are enabled: interrupts
///   masked, receiver and transmitter off by hand, CTRL.RST, the 82574L's MSI-X routing
///   cleared, pending causes cleared; so whatever a killed predecessor left behind is gone
///   even where the reset resets nothing else (QEMU's models); then the MAC address from the
///   EEPROM, link up, and both descriptor rings, written while the receiver is off.
/// - **Datapath**: ``receiveFrames(budget:_:)`` and ``transmitFrames(count:_:)`` lend frames as
///   views of the DMA buffers themselves, under the rings' `SpinLock`s (shared with the
///   receive DPC): no allocation and no reference counting per frame, no register access that
///   throws.
/// - **Interrupts**: the acknowledge routine reads ICR; the ISR masks the receive causes and
///   queues the receive DPC, which polls while frames keep coming (NAPI style).
/// - **Failure**: a NIC that stops answering (a register reads all-ones, the register region
///   counts a failed access) is reported once in ``failure``; every later call fails with it.
public final class E1000Driver: @unchecked Sendable {
    /// Why a driver call, or the driver, failed; every later call fails with the first failure
    /// that ends the driver (not responding, removed, stopped).
    public enum Failure: Error, DeviceRemovalReporting, CustomStringConvertible, Equatable {
        case timedOut(String)
        case badFrame(String)
        case badConfiguration(String)
        /// The NIC stopped answering (or was never there): registers read all-ones.
        case notResponding(String)
        /// The NIC was removed: the kernel asked for it back (an unbind, a hot-unplug).
        case removed(String)
        /// No transmit descriptor is free and the caller cannot wait (an ISR, a DPC, a frame
        /// handler, or with interrupts disabled).
        case transmitRingFull
        /// The driver was stopped.
        case stopped

        /// What failed, in a sentence for the command line.
        public var description: String {
            switch self {
            case .timedOut(let what): "timed out: \(what)"
            case .badFrame(let what), .badConfiguration(let what): what
            case .notResponding(let what): "device not responding: \(what)"
            case .removed(let why): why
            case .transmitRingFull: "no transmit descriptor is free and the caller may not wait for one"
            case .stopped: "the e1000 driver was stopped"
            }
        }

        /// Whether the failure says the NIC is gone (removed, or not answering).
        public var isDeviceRemoval: Bool {
            switch self {
            case .notResponding, .removed: true
            default: false
            }
        }
    }

    /// Who takes received frames off the ring.
    public enum ReceiveMode: Sendable {
        /// Interrupts of this kind (the 82540EM offers INTx); receive processing in a DPC,
        /// which masks receive interrupts and polls while frames keep coming (NAPI style).
        case interrupts(InterruptKind)
        /// A thread of the driver's own polls the ring.
        case pollingThread
        /// Nothing runs on its own: the caller takes frames with ``receiveFrames(budget:_:)``.
        case caller
    }

    /// The NIC's PCI function, as opened by `DeviceOpener` or a device model.
    public let device: any DeviceAccess
    /// The runtime whose ISR, DPCs and locks the driver uses: user mode or the kernel emulation.
    public let runtime: any DriverRuntime
    /// The controller found at start.
    public let variant: E1000Variant
    /// The MAC address read from the EEPROM.
    public let macAddress: [UInt8]
    /// Descriptors per ring.
    public let ringSize: Int
    /// The most frames one receive DPC pass takes before it queues itself again.
    public let receiveBudget: Int
    /// Every this many transmit descriptors (and the last of each batch) the NIC is asked to
    /// write back (RS); the descriptors between are reclaimed with them.
    public let transmitReportInterval: Int
    /// The receive buffer size (RCTL.BSIZE).
    static let bufferSize = 2048
    /// The largest frame without FCS (the NIC appends it). A constant the compiler folds into
    /// the callers' inlined transmit loops (``E1000TransmitBatch/append(_:)``).
    @inlinable public static var maximumFrame: Int { 1514 }
    /// The smallest frame: an Ethernet header (the NIC pads short frames to 60 bytes).
    @inlinable public static var minimumFrame: Int { 14 }

    let registers: MMIORegion
    let fault: DeviceFault
    let receiveRing: DescriptorRing
    let transmitRing: DescriptorRing
    let receiveBuffers: DMAPool
    let transmitBuffers: DMAPool
    /// The receive side, shared by callers, the polling thread and the receive DPC.
    let receive: SpinLock<ReceiveState>
    /// The transmit side, shared by every sender (frame handlers in the DPC included).
    let transmit: SpinLock<TransmitState>
    /// Signalled by the ISR when a transmit descriptor was written back or the link changed;
    /// senders waiting for a free descriptor wait on it.
    let progress: WaitEvent
    /// Start and stop, at passive level.
    let lifecycle: PassiveLock<Lifecycle>
    /// The receive DPC, made once at start when receiving by interrupts.
    var receiveDPC: DeferredProcedureCall? {
        didSet { receiveDPCReference = receiveDPC.map { Unmanaged.passUnretained($0) } }
    }
    /// The same DPC unretained, for the receive pass that queues it again: loading
    /// ``receiveDPC`` would take a reference on every pass. Written only at start, before
    /// the interrupts that lead to those passes are attached (so read without an exclusivity check).
    @exclusivity(unchecked) private(set) var receiveDPCReference: Unmanaged<DeferredProcedureCall>?
    /// The MSI-X layout asked for at start (used on a controller with MSI-X, with `.msix`).
    public let msixVectors: MSIXVectors
    /// How interrupts are taken, set once at start; nil without interrupts. Read by the
    /// receive DPC on every pass, so without a dynamic exclusivity check: it is written only
    /// at start, before the interrupts that lead to those reads are attached.
    @exclusivity(unchecked) public internal(set) var interruptScheme: E1000InterruptScheme?

    struct ReceiveState {
        /// The next descriptor to look at.
        var next = 0
        var frames = 0, bytes = 0, errors = 0
        var passes = 0, budgetExhausted = 0
        /// Set by ``stop()``: the DPC and the polling thread do nothing more.
        var stopping = false
        /// The frame handlers, replaced as a whole when one is set (kept alive here).
        var handlers = FrameHandlers(view: nil, copy: nil) {
            didSet { handlersReference = Unmanaged.passUnretained(handlers) }
        }
        /// The same handlers unretained, for the receive pass: it calls them without taking a
        /// reference (``handlers`` keeps them, and changing them takes the receive lock the
        /// pass holds).
        private(set) var handlersReference: Unmanaged<FrameHandlers>

        init() {
            handlersReference = Unmanaged.passUnretained(handlers)
        }
    }

    /// The receive DPC's and polling thread's frame handlers, immutable: setting one makes a
    /// new pair, so that a pass can call them with no copy out of the receive state.
    final class FrameHandlers: Sendable {
        let view: (@Sendable (borrowing DMABytes) -> Void)?
        let copy: (@Sendable ([UInt8]) -> Void)?

        /// The view handler, else one that hands a copy to the array handler, else one that
        /// drops the frame: chosen once, so that a frame costs one call and no copy of a handler.
        let deliver: @Sendable (borrowing DMABytes) -> Void

        init(view: (@Sendable (borrowing DMABytes) -> Void)?, copy: (@Sendable ([UInt8]) -> Void)?) {
            self.view = view
            self.copy = copy
            if let view {
                deliver = view
            } else if let copy {
                deliver = { frame in copy(frame.copyToArray()) }
            } else {
                deliver = { _ in }
            }
        }
    }

    struct TransmitState {
        /// The next free descriptor.
        var tail = 0
        /// The oldest descriptor handed to the NIC and not yet seen done: descriptors from
        /// here to the tail are the NIC's. One descriptor always stays unused, because a tail
        /// equal to the head means an empty ring to the NIC.
        var clean = 0
        var frames = 0, bytes = 0, batches = 0
        /// Descriptors to go until the next that asks the NIC for a write-back (RS): a
        /// countdown from ``E1000Driver/transmitReportInterval``, so that the decision per frame
        /// is a decrement and a compare, not a division.
        var untilReport: Int
    }

    struct Lifecycle {
        var attachments: [InterruptAttachment] = []
        var poller: SystemThread?
        var removalWatch: RemovalWatch?
        var stopped = false
    }

    /// Brings the NIC up with receive processing by interrupts of kind `interrupt` (`.intx`
    /// on the 82540EM), or by a polling thread when it is nil.
    public convenience init(device: any DeviceAccess, runtime: any DriverRuntime, interrupt: InterruptKind?) throws {
        try self.init(device: device, runtime: runtime, receive: interrupt.map { .interrupts($0) } ?? .pollingThread)
    }

    /// Brings the NIC up. `ringSize` descriptors per ring (a multiple of 8, 8 to 4096);
    /// `receiveBudget` frames at most per receive DPC pass; `msixVectors`, with
    /// `.interrupts(.msix)` on a controller that has MSI-X, a vector per cause or one for all;
    /// `transmitReportInterval` (1 to half the ring; by default a quarter of the ring, at
    /// most 32) how often the NIC writes transmit descriptors back. A device that does not
    /// answer is refused at once with ``Failure/notResponding(_:)``, before anything is
    /// written to it.
    public init(device: any DeviceAccess, runtime: any DriverRuntime, receive mode: ReceiveMode,
                ringSize: Int = 32, receiveBudget: Int = 64, msixVectors: MSIXVectors = .perCause,
                transmitReportInterval: Int? = nil) throws {
        guard ringSize % 8 == 0, (8...4096).contains(ringSize) else {
            throw Failure.badConfiguration("a descriptor ring holds a multiple of 8 descriptors from 8 to 4096, not \(ringSize)")
        }
        let reportInterval = transmitReportInterval ?? min(32, ringSize / 4)
        guard (1...ringSize / 2).contains(reportInterval) else {
            throw Failure.badConfiguration("the transmit report interval is 1 to half the ring (\(ringSize / 2)), not \(reportInterval)")
        }
        self.transmitReportInterval = reportInterval
        guard receiveBudget > 0 else { throw Failure.badConfiguration("the receive budget must be positive, not \(receiveBudget)") }
        self.device = device
        self.runtime = runtime
        self.ringSize = ringSize
        self.receiveBudget = receiveBudget
        self.msixVectors = msixVectors
        variant = try Self.identify(device)
        registers = try device.region(0)
        progress = runtime.makeWaitEvent("e1000 progress")
        macAddress = try Self.probeAndReset(device, registers, variant, runtime: runtime, event: progress)

        fault = DeviceFault(runtime: runtime, name: "e1000", removal: device.removal)
        receiveRing = DescriptorRing(memory: try device.allocateDMA(size: ringSize * DescriptorRing.descriptorSize),
                                     count: ringSize, fault: fault)
        transmitRing = DescriptorRing(memory: try device.allocateDMA(size: ringSize * DescriptorRing.descriptorSize),
                                      count: ringSize, fault: fault)
        receiveBuffers = try DMAPool(device: device, chunkSize: Self.bufferSize, count: ringSize)
        transmitBuffers = try DMAPool(device: device, chunkSize: Self.bufferSize, count: ringSize)
        receive = runtime.makeSpinLock("e1000 receive ring", ReceiveState())
        transmit = runtime.makeSpinLock("e1000 transmit ring", TransmitState(untilReport: reportInterval))
        lifecycle = runtime.makePassiveLock("e1000 lifecycle", Lifecycle())
        do {
            try start(mode)
            let watch = try runtime.onRemoval(of: device, name: "e1000") { [weak self] cause in self?.remove(cause) }
            lifecycle.withLock { $0.removalWatch = watch }
        } catch {
            stop()
            throw error
        }
    }

    /// Retires the receive DPC, which reaches the driver through an unretained reference: a
    /// run in progress is waited for and none starts afterwards.
    deinit {
        receiveDPC?.retire()
    }

    /// The remove routine, at passive level (the kernel's `.remove()`): the NIC is going away.
    /// Every later call fails with ``Failure/removed(_:)`` (or ``Failure/notResponding(_:)``
    /// when the driver found it not answering first), receive processing does nothing more,
    /// and senders waiting for a descriptor wake; the owner then stops the driver and closes
    /// the device, which lets the kernel finish the unbind or unplug.
    public func remove(_ cause: RemovalCause) {
        fault.reportRemoval(cause)
        receive.withLock { $0.stopping = true }
        progress.signal()
    }

    /// Why the NIC went away, once it did (removed, or found not answering).
    public var removal: String? { fault.description }

    /// Fails with ``Failure/notResponding(_:)`` once the NIC has been seen not answering (or
    /// the register region counted a failed access).
    @inline(__always)
    func checkResponding() throws {
        noteRegionFaults()
        if fault.isRaised { throw fault.wasRemoved ? Failure.removed(fault.description ?? "") : Failure.notResponding(fault.description ?? "") }
    }

    /// Reports the register region's first failed access, if it counted any.
    @inline(__always)
    private func noteRegionFaults() {
        guard registers.health.faultCount != 0, !fault.isRaised else { return }
        fault.report("a register access failed: \(registers.health.firstFault.map { "\($0)" } ?? "unknown")")
    }

    /// Why the driver stopped working, once the NIC stopped answering; nil while it works.
    public var failure: Failure? {
        noteRegionFaults()
        return fault.description.map { fault.wasRemoved ? Failure.removed($0) : Failure.notResponding($0) }
    }

    /// Whether the link is up (STATUS.LU). A STATUS reading all-ones is reported in ``failure``.
    public var linkUp: Bool {
        let status = registers.load(E1000Register.status)
        guard status != .max else {
            fault.report("STATUS reads all-ones")
            return false
        }
        return DeviceStatus(rawValue: status).contains(.linkUp)
    }

    /// Frames and bytes the driver received and sent.
    public var statistics: (framesReceived: Int, framesSent: Int, bytesReceived: Int, bytesSent: Int) {
        let received = receive.withLock { ($0.frames, $0.bytes) }
        let sent = transmit.withLock { ($0.frames, $0.bytes) }
        return (received.0, sent.0, received.1, sent.1)
    }

    /// Frames the NIC itself counted as transmitted (its GPTC statistics register) since the
    /// previous call or the start: what a benchmark compares with other senders' NIC counts.
    /// The register clears when read, so one caller should own it.
    public func framesTransmittedByNIC() -> Int {
        Int(registers.load(E1000Register.goodPacketsTransmitted))
    }

    /// Received descriptors dropped because the NIC flagged an error or the frame did not fit
    /// one buffer.
    public var receiveErrors: Int { receive.withLock { $0.errors } }

    /// How receive processing went: DPC (or polling thread) passes over the ring, and passes
    /// that used up the budget and so polled again with receive interrupts still masked.
    public var receivePasses: (passes: Int, budgetExhausted: Int) {
        receive.withLock { ($0.passes, $0.budgetExhausted) }
    }

    /// Stops receive processing (the polling thread ends, the ISR is detached, a queued
    /// receive DPC does nothing more), masks the NIC's interrupts, disables its receiver,
    /// transmitter and bus mastering. Idempotent.
    public func stop() {
        lifecycle.withLock { life in
            guard !life.stopped else { return }
            life.stopped = true
            life.removalWatch?.cancel()
            life.removalWatch = nil
            receive.withLock { $0.stopping = true }
            life.poller?.join()
            life.poller = nil
            life.attachments.forEach { runtime.detachInterrupt($0) }
            life.attachments = []
            quiesce()
            do {
                try device.disableInterrupts()
            } catch {
                fault.report("its interrupts could not be disabled: \(error)")
            }
        }
        progress.signal()
    }
}

extension String {
    /// The string with `pad` characters in front up to `length`.
    func leftPadded(to length: Int, with pad: Character = "0") -> String {
        count >= length ? self : String(repeating: pad, count: length - count) + self
    }
}
