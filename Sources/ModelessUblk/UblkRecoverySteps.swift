import ModelessSystem

/// How long each step of a ublk user recovery (``UblkExport/recover(deviceID:_:buffers:timeout:beforeEnding:)``)
/// took, in nanoseconds from the call: the stall a killed server's successor adds is the sum.
public struct UblkRecoverySteps: Sendable, Equatable, CustomStringConvertible {
    /// Until the device was seen quiesced (0 if it already was at the first look): the
    /// kernel's cancelling of the dead server's commands and requeueing of its requests.
    public var quiesced: UInt64 = 0
    /// Until START_USER_RECOVERY was accepted: the device quiesced and the dead server's
    /// `/dev/ublkcN` released (its io_uring torn down).
    public var started: UInt64 = 0
    /// How many times START_USER_RECOVERY answered EBUSY first.
    public var busyAnswers = 0
    /// Until every queue had every tag fetched.
    public var queuesFetched: UInt64 = 0
    /// Of that, how long preparing the queues took (their descriptors mapped, their tags'
    /// buffers allocated: for the NVMe driver, DMA memory mapped into the IOMMU).
    public var preparingQueues: UInt64 = 0
    /// Until the backend was ready for requests (``UblkExport/recover(deviceID:_:buffers:timeout:beforeEnding:)``'s
    /// `beforeEnding` returned): the same as ``queuesFetched`` for a backend ready from the start.
    public var backendReady: UInt64 = 0
    /// Until END_USER_RECOVERY returned: the device live again.
    public var ended: UInt64 = 0

    /// Every step at 0, filled in as the recovery runs.
    public init() {}

    /// The steps in milliseconds, one decimal: "quiesced at 0.0 ms, START_USER_RECOVERY accepted at 1.2 ms …".
    public var description: String {
        let ms = millisecondsText
        return "quiesced at \(ms(quiesced)) ms, START_USER_RECOVERY accepted at \(ms(started)) ms (after \(busyAnswers) EBUSY), "
            + "queues fetched at \(ms(queuesFetched)) ms (\(ms(preparingQueues)) ms of it preparing them), backend ready at \(ms(backendReady)) ms, "
            + "END_USER_RECOVERY at \(ms(ended)) ms"
    }
}
