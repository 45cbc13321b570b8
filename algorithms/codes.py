"""Coded concepts that plugins put in findings (finding types, sites, measurements, units).

Document-structure codes (TID 1500 titles, purposes of reference) live in ``dicom_sr.codes``.
"""

from __future__ import annotations

from algorithms.contract import Code

# Finding types
LUNG_NODULE = Code("27925004", "SCT", "Nodule")
FRACTURE = Code("125605004", "SCT", "Fracture of bone")
PULMONARY_EMBOLISM = Code("59282003", "SCT", "Pulmonary embolism")
# Finding sites
LUNG = Code("39607008", "SCT", "Lung")
# Pulmonary arteries (DICOM CID 3604 Arterial Lesion Location / CID 8134)
PULMONARY_ARTERY = Code("81040000", "SCT", "Pulmonary artery")
PULMONARY_TRUNK = Code("45341000", "SCT", "Pulmonary trunk")
RIGHT_PULMONARY_ARTERY = Code("78480002", "SCT", "Right pulmonary artery")
LEFT_PULMONARY_ARTERY = Code("50408007", "SCT", "Left pulmonary artery")
# Long bones and limb segments (DICOM CID 4031 codes for BodyPartExamined values)
FEMUR = Code("71341001", "SCT", "Femur")
TIBIA = Code("12611008", "SCT", "Tibia")
FIBULA = Code("87342007", "SCT", "Fibula")
HUMERUS = Code("85050009", "SCT", "Humerus")
RADIUS = Code("131190003", "SCT", "Radius")
ULNA = Code("23416004", "SCT", "Ulna")
LOWER_LEG = Code("30021000", "SCT", "Lower leg")
FOREARM = Code("14975008", "SCT", "Forearm")
UPPER_ARM = Code("40983000", "SCT", "Upper arm")
THIGH = Code("68367000", "SCT", "Thigh")
# Qualifier names (CID 210) and values: laterality (CID 244) and the level of a finding in
# a vessel tree as a topographical modifier (Central: CID 6124; Lobar, Segmental: CID 6128)
LATERALITY = Code("272741003", "SCT", "Laterality")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
BILATERAL = Code("51440002", "SCT", "Bilateral")
TOPOGRAPHICAL_MODIFIER = Code("106233006", "SCT", "Topographical modifier")
CENTRAL = Code("26216008", "SCT", "Central")
LOBAR = Code("112158", "DCM", "Lobar")
SEGMENTAL = Code("62372003", "SCT", "Segmental")
# Multiple sclerosis lesions on brain MRI: finding type (morphologic abnormality), sites
# (DICOM CID 7140/7151 brain structures), change since the prior exam (qualifier name
# "Changed status" with its child values), and study-level lesion counts.
DEMYELINATION = Code("32693004", "SCT", "Demyelination")
CEREBRAL_WHITE_MATTER = Code("68523003", "SCT", "Cerebral white matter")
CEREBELLUM = Code("113305005", "SCT", "Cerebellum")
BRAIN_STEM = Code("119238007", "SCT", "Brain stem")
CHANGED_STATUS = Code("263703002", "SCT", "Changed status")
NEW = Code("7147002", "SCT", "New")
INCREASED = Code("35105006", "SCT", "Increased")
STABLE = Code("58158008", "SCT", "Stable")
DECREASED = Code("1250004", "SCT", "Decreased")
NUMBER_OF_LESIONS = Code("246206008", "SCT", "Number of lesions")
# No standard code was found for these two counts: local codes (99 prefix, PS3.16 8.2).
NUMBER_OF_NEW_LESIONS = Code("RR-NEWLES", "99RADROUTER", "Number of new lesions")
NUMBER_OF_ENLARGING_LESIONS = Code("RR-ENLLES", "99RADROUTER", "Number of enlarging lesions")
NO_UNITS = Code("1", "UCUM", "no units")
# Measurements
LONG_AXIS = Code("103339001", "SCT", "Long axis")
VOLUME = Code("118565006", "SCT", "Volume")
# UCUM units
MILLIMETRE = Code("mm", "UCUM", "millimeter")
CUBIC_MILLIMETRE = Code("mm3", "UCUM", "cubic millimeter")
# CT constancy tests on a water phantom (algorithms.ct_water_qa). No standard codes were found
# for these: local codes (99 prefix, PS3.16 8.2).
CT_CONSTANCY_FAILURE = Code("RR-CTQAFAIL", "99RADROUTER", "CT constancy test out of tolerance")
WATER_CT_NUMBER_FAILURE = Code("RR-WATERFAIL", "99RADROUTER", "Water CT number out of tolerance")
UNIFORMITY_FAILURE = Code("RR-UNIFFAIL", "99RADROUTER", "Uniformity out of tolerance")
NOISE_FAILURE = Code("RR-NOISEFAIL", "99RADROUTER", "Noise out of tolerance")
WATER_CT_NUMBER = Code("RR-WATERHU", "99RADROUTER", "Mean CT number of water")
NOISE = Code("RR-NOISEHU", "99RADROUTER", "Noise (standard deviation of CT number)")
UNIFORMITY = Code("RR-UNIFHU", "99RADROUTER", "Uniformity (peripheral minus central CT number)")
HOUNSFIELD_UNIT = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
