//! iSCSI names: IQN, EUI and NAA.
